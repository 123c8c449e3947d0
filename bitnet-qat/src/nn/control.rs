//! Run-time QAT settings a schedule changes during training: the STE blend lambda, the soft
//! STE temperature and the weight format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::quant::QuantFormat;

/// Shared, thread-safe settings of one [`Quantizer`](super::Quantizer), read at every forward
/// pass. Clones of a quantizer (for example by `Module::valid` or `clone`) share them, so a
/// schedule that updates the training model also updates its validation copies.
///
/// Not recorded: they are functions of the global step, so a resumed run sets them again from
/// its schedule ([`crate::schedule::QatScheduler::apply`]).
///
/// # Example
/// ```
/// use bitnet_qat::nn::QatControl;
/// let c = QatControl::default();
/// assert_eq!(c.lambda(), 1.0);
/// c.set_lambda(0.25);
/// assert_eq!(c.clone().lambda(), 0.25);
/// ```
#[derive(Debug, Clone)]
pub struct QatControl(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    lambda: AtomicU64,
    temperature: AtomicU64,
    format: AtomicU64,
}

/// Encoded "no override".
const NONE: u64 = u64::MAX;

impl Default for QatControl {
    /// Lambda 1 (fully quantized), no temperature or format override.
    fn default() -> Self {
        Self(Arc::new(Inner {
            lambda: AtomicU64::new(1f64.to_bits()),
            temperature: AtomicU64::new(NONE),
            format: AtomicU64::new(NONE),
        }))
    }
}

impl QatControl {
    /// The blend `x + lambda (q(x) - x)`: 0 is full precision, 1 fully quantized.
    pub fn lambda(&self) -> f64 {
        f64::from_bits(self.0.lambda.load(Ordering::Relaxed))
    }

    /// Sets lambda, clamped to `[0, 1]` (NaN is taken as 1).
    pub fn set_lambda(&self, lambda: f64) {
        let v = if lambda.is_nan() {
            1.0
        } else {
            lambda.clamp(0.0, 1.0)
        };
        self.0.lambda.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The temperature that replaces the configured soft STE temperature, if any.
    pub fn temperature(&self) -> Option<f64> {
        match self.0.temperature.load(Ordering::Relaxed) {
            NONE => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// Overrides the soft STE temperature (`None` restores the configured one). Values that are
    /// not finite and positive are ignored.
    pub fn set_temperature(&self, temperature: Option<f64>) {
        let bits = match temperature {
            Some(t) if t.is_finite() && t > 0.0 => t.to_bits(),
            Some(_) => return,
            None => NONE,
        };
        self.0.temperature.store(bits, Ordering::Relaxed);
    }

    /// The format that replaces the configured weight format, if any.
    pub fn format(&self) -> Option<QuantFormat> {
        match self.0.format.load(Ordering::Relaxed) {
            NONE => None,
            0 => Some(QuantFormat::Binary),
            1 => Some(QuantFormat::Ternary),
            b => Some(QuantFormat::Int {
                bits: (b - 100) as u32,
            }),
        }
    }

    /// Overrides the format (`None` restores the configured one). Invalid formats are rejected.
    pub fn set_format(&self, format: Option<QuantFormat>) -> crate::Result<()> {
        let code = match format {
            None => NONE,
            Some(f) => {
                f.validate()?;
                match f {
                    QuantFormat::Binary => 0,
                    QuantFormat::Ternary => 1,
                    QuantFormat::Int { bits } => 100 + bits as u64,
                }
            }
        };
        self.0.format.store(code, Ordering::Relaxed);
        Ok(())
    }
}
