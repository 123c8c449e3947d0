//! Generate text with a language model saved by `train_lm` (packed ternary weights run the
//! packed kernels; f32 models run Burn's matmul), printing the text and the tokens per second.
//!
//! ```text
//! cargo run --release --example generate -- --checkpoint target/train_lm/model --prompt "ROMEO."
//! cargo run --release --example generate -- --checkpoint DIR --prompt "To be" --greedy
//! cargo run --release --example generate -- --gguf model.gguf --prompt "ROMEO."
//! ```
//!
//! `--gguf` runs a GGUF file of llama.cpp's `bitnet` architecture (see `export`) with this
//! crate's packed kernels; `--hf` a Hugging Face `BitNetForCausalLM` folder.

use std::path::PathBuf;
use std::time::Instant;

use bitnet_qat::export::{import_gguf, import_hf};
use bitnet_qat::lm::SavedLm;
use bitnet_qat::lm::{Sampling, generate};
use bitnet_qat_examples::cli::DeviceArg;
use clap::Parser;

/// Generate text with a trained BitNet language model.
#[derive(Parser, Debug)]
struct Args {
    /// The model folder `train_lm` wrote (OUT/model).
    #[arg(long, required_unless_present_any = ["gguf", "hf"], conflicts_with_all = ["gguf", "hf"])]
    checkpoint: Option<PathBuf>,
    /// A GGUF file (llama.cpp's `bitnet` architecture) instead of a checkpoint.
    #[arg(long, conflicts_with = "hf")]
    gguf: Option<PathBuf>,
    /// A Hugging Face `BitNetForCausalLM` folder instead of a checkpoint.
    #[arg(long)]
    hf: Option<PathBuf>,
    /// The text to continue.
    #[arg(long, default_value = "ROMEO.\n")]
    prompt: String,
    /// Tokens (characters) to generate.
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Take the most likely token each time instead of sampling.
    #[arg(long)]
    greedy: bool,
    /// Sample from the k most likely tokens.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArg,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.device.device()?;
    let (lm, config, tokenizer) = match (&args.checkpoint, &args.gguf, &args.hf) {
        (Some(dir), ..) => SavedLm::load(dir, &device)?,
        (None, file, dir) => {
            let imported = match (file, dir) {
                (Some(file), _) => import_gguf(file)?,
                (None, Some(dir)) => import_hf(dir)?,
                (None, None) => unreachable!("clap requires one of the three"),
            };
            let tokenizer = imported.tokenizer.clone().ok_or(
                "the file's vocabulary is not a character vocabulary of this crate: no tokenizer \
                 to encode the prompt with",
            )?;
            (
                imported.packed(&device)?,
                imported.config().clone(),
                tokenizer,
            )
        }
    };
    let prompt = tokenizer.encode(&args.prompt);
    let sampling = if args.greedy {
        Sampling::Greedy
    } else {
        Sampling::TopK {
            k: args.top_k,
            temperature: args.temperature,
        }
    };
    let room = config.max_seq_len.saturating_sub(prompt.len());
    let n = args.tokens.min(room);
    let start = Instant::now();
    let out = generate(&lm, &prompt, n, sampling, args.seed)?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{}{}", args.prompt, tokenizer.decode(&out));
    println!(
        "{} tokens in {seconds:.2} s: {:.1} tokens/s (prompt of {} tokens included; {} weights)",
        out.len(),
        out.len() as f64 / seconds,
        prompt.len(),
        if lm.is_packed() { "packed" } else { "f32" }
    );
    if n < args.tokens {
        println!(
            "(stopped at the model's max_seq_len of {})",
            config.max_seq_len
        );
    }
    Ok(())
}
