//! `loader-memory`: the peak heap of each loader on files of realistic size, against the bound
//! the fuzzer holds every input to (4× the input plus 64 MiB): a packed language model through
//! `load_packed` and `SavedLm::load`, the same model's GGUF (TQ2_0 and TQ1_0) and Hugging Face
//! exports through their importers (built into the packed model), and Fashion-MNIST's IDX
//! files when they are installed.
//!
//! ```text
//! cargo run --release -p bitnet-qat-benches --bin loader-memory -- --d-model 1024 --layers 4
//! ```

use bitnet_qat::data::{FASHION_MNIST_DIR, IdxDataset, Split};
use bitnet_qat::export::{GgufTernary, export_gguf, export_hf, import_gguf_bytes, import_hf_bytes};
use bitnet_qat::infer::{load_packed_bytes, pack, save};
use bitnet_qat::lm::CharTokenizer;
use bitnet_qat::lm::{BitNetLmConfig, FfnActivation, SavedLm};
use bitnet_qat_benches::heap::{Counting, peak_during};
use bitnet_qat_benches::write_atomic;
use burn::tensor::Device;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Measures the loaders' peak heap on realistic files.
#[derive(Parser, Debug)]
struct Args {
    /// Width of the language model.
    #[arg(long, default_value_t = 1024)]
    d_model: usize,
    /// Blocks of the language model.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One measurement: the loader, the input bytes, the peak heap above the level before it.
struct Row {
    loader: &'static str,
    input: usize,
    peak: usize,
}

fn main() {
    let args = Args::parse();
    let device = Device::flex();
    let tokenizer = CharTokenizer::from_text("abcdefghijklmnopqrstuvwxyz .,\n");
    let config = BitNetLmConfig::new(
        tokenizer.vocab_size(),
        args.d_model,
        args.layers,
        args.d_model / 64,
        args.d_model * 8 / 3 / 256 * 256,
    )
    .with_activation(FfnActivation::Silu)
    .with_max_seq_len(256);
    let lm = config.init(&device).expect("a valid configuration");
    let dir = std::env::temp_dir().join(format!("bitnet-loader-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let mut rows = Vec::new();

    // A packed model, as `save` writes it.
    let packed_path = dir.join("packed.bpk");
    save(pack(&lm).expect("packs"), &packed_path).expect("saves");
    let bytes = std::fs::read(&packed_path).expect("written");
    let skeleton = config.init_packed_skeleton(&device).expect("valid");
    let (loaded, peak) = peak_during(|| load_packed_bytes(skeleton, bytes.clone()));
    loaded.expect("loads");
    rows.push(Row {
        loader: "load_packed (packed BitNetLm)",
        input: bytes.len(),
        peak,
    });

    // The same model saved as a folder.
    let saved = dir.join("saved");
    SavedLm::save(&saved, &config, &tokenizer, &lm, true).expect("saves");
    let files = [SavedLm::CONFIG, SavedLm::TOKENIZER, SavedLm::PACKED]
        .map(|n| std::fs::read(saved.join(n)).expect("written"));
    let input = files.iter().map(Vec::len).sum();
    let (loaded, peak) =
        peak_during(|| SavedLm::load_bytes(&files[0], &files[1], files[2].clone(), true, &device));
    loaded.expect("loads");
    rows.push(Row {
        loader: "SavedLm::load_bytes",
        input,
        peak,
    });

    // GGUF, both ternary types, imported and built into the packed model.
    for (ternary, name) in [
        (GgufTernary::Tq2_0, "import_gguf_bytes + packed (TQ2_0)"),
        (GgufTernary::Tq1_0, "import_gguf_bytes + packed (TQ1_0)"),
    ] {
        let path = dir.join("model.gguf");
        export_gguf(&lm, &config, &tokenizer, &path, ternary).expect("exports");
        let bytes = std::fs::read(&path).expect("written");
        let (built, peak) =
            peak_during(|| import_gguf_bytes(&bytes).and_then(|i| i.packed(&device)));
        built.expect("imports");
        rows.push(Row {
            loader: name,
            input: bytes.len(),
            peak,
        });
    }

    // Hugging Face.
    let hf = dir.join("hf");
    export_hf(&lm, &config, &tokenizer, &hf).expect("exports");
    let files = ["config.json", "model.safetensors", "tokenizer.json"]
        .map(|n| std::fs::read(hf.join(n)).expect("written"));
    let input = files.iter().map(Vec::len).sum();
    let (built, peak) = peak_during(|| {
        import_hf_bytes(&files[0], &files[1], Some(&files[2])).and_then(|i| i.packed(&device))
    });
    built.expect("imports");
    rows.push(Row {
        loader: "import_hf_bytes + packed",
        input,
        peak,
    });

    // Fashion-MNIST's training files, when installed (gzip: bounded by 1 GiB decompressed).
    let images = std::path::Path::new(FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz");
    if images.exists() {
        let input = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
            .iter()
            .map(|n| {
                std::fs::metadata(std::path::Path::new(FASHION_MNIST_DIR).join(n))
                    .map(|m| m.len() as usize)
                    .unwrap_or(0)
            })
            .sum();
        let (loaded, peak) = peak_during(|| IdxDataset::load(FASHION_MNIST_DIR, Split::Train));
        loaded.expect("loads");
        rows.push(Row {
            loader: "IdxDataset::load (gzip, 60,000 images)",
            input,
            peak,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "model: width {}, {} blocks, vocabulary {}\n",
        args.d_model,
        args.layers,
        tokenizer.vocab_size()
    );
    println!("| loader | input (MiB) | peak heap (MiB) | peak / input | within 4x + 64 MiB |");
    println!("|---|---|---|---|---|");
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let mut json = Vec::new();
    for r in &rows {
        let within = r.peak <= r.input * 4 + (64 << 20);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {} |",
            r.loader,
            mib(r.input),
            mib(r.peak),
            r.peak as f64 / r.input as f64,
            if within { "yes" } else { "no" }
        );
        json.push(serde_json::json!({
            "loader": r.loader,
            "input_bytes": r.input,
            "peak_heap_bytes": r.peak,
            "within_bound": within,
        }));
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "d_model": args.d_model,
            "layers": args.layers,
            "rows": json,
        });
        write_atomic(
            path,
            serde_json::to_string_pretty(&json)
                .expect("json")
                .as_bytes(),
        )
        .expect("write json");
    }
}
