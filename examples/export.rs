//! Export a language model saved by `train_lm` to the formats other engines run: GGUF for
//! llama.cpp (`bitnet` architecture, ternary TQ2_0 or TQ1_0) or a Hugging Face
//! `BitNetForCausalLM` folder (transformers' offline-packed `bitlinear` weights).
//!
//! ```text
//! cargo run --release --example export -- --checkpoint target/train_lm/model --format gguf --out model.gguf
//! cargo run --release --example export -- --checkpoint target/train_lm/model --format hf --out model-hf
//! ```
//!
//! See docs/export.md for what each engine can represent and how to run the result.

use std::path::PathBuf;

use bitnet_qat::export::{GgufTernary, export_gguf, export_hf};
use bitnet_qat::lm::SavedLm;
use burn::tensor::Device;
use clap::{Parser, ValueEnum};

/// The format to write.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    /// One GGUF file for llama.cpp.
    Gguf,
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer.json).
    Hf,
}

/// The GGUF ternary type.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Ternary {
    /// 2.0625 bits a weight (faster).
    Tq2,
    /// 1.6875 bits a weight (smaller).
    Tq1,
}

/// Export a trained BitNet language model.
#[derive(Parser, Debug)]
struct Args {
    /// The model folder `train_lm` wrote (OUT/model).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The format.
    #[arg(long, value_enum)]
    format: Format,
    /// The file (gguf) or folder (hf) to write.
    #[arg(long)]
    out: PathBuf,
    /// The ternary type of a GGUF file.
    #[arg(long, value_enum, default_value = "tq2")]
    ternary: Ternary,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex();
    let (lm, config, tokenizer) = SavedLm::load(&args.checkpoint, &device)?;
    let bytes = match args.format {
        Format::Gguf => {
            let ternary = match args.ternary {
                Ternary::Tq2 => GgufTernary::Tq2_0,
                Ternary::Tq1 => GgufTernary::Tq1_0,
            };
            export_gguf(&lm, &config, &tokenizer, &args.out, ternary)?;
            std::fs::metadata(&args.out)?.len()
        }
        Format::Hf => {
            export_hf(&lm, &config, &tokenizer, &args.out)?;
            std::fs::read_dir(&args.out)?
                .map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()))
                .sum::<std::io::Result<u64>>()?
        }
    };
    println!(
        "wrote {} ({bytes} bytes; {} blocks, width {}, vocabulary {})",
        args.out.display(),
        config.n_layers,
        config.d_model,
        config.vocab_size
    );
    Ok(())
}
