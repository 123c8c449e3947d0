//! Reports of the examples: a markdown accuracy table and a PNG plot of validation curves.

use std::path::Path;

use bitnet_qat::{QatError, Result};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One trained variant: its name, its weights in words, and its validation accuracy after each
/// epoch (the last is the test accuracy when validating on the test split).
#[derive(Debug, Clone)]
pub struct Variant {
    /// Short name, first column of the table and legend of the plot.
    pub name: String,
    /// What the weights and activations are (`"ternary (W1.58 A8)"`).
    pub weights: String,
    /// Validation accuracy in percent, one per epoch.
    pub curve: Vec<f64>,
    /// Training wall time in seconds.
    pub seconds: f64,
}

impl Variant {
    /// The final accuracy.
    pub fn accuracy(&self) -> f64 {
        self.curve.last().copied().unwrap_or(f64::NAN)
    }
}

/// The markdown table: one row per variant, its name first, then the test accuracy in percent,
/// the gap to the first row (the baseline) in points, the best epoch and the time.
pub fn markdown_table(variants: &[Variant]) -> String {
    let baseline = variants.first().map_or(f64::NAN, Variant::accuracy);
    let mut out = String::from(
        "| variant | weights | test accuracy (%) | vs first row (pp) | best epoch (%) | train time (s) |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for v in variants {
        let best = v.curve.iter().copied().fold(f64::NAN, f64::max);
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:+.2} | {:.2} | {:.1} |\n",
            v.name,
            v.weights,
            v.accuracy(),
            v.accuracy() - baseline,
            best,
            v.seconds
        ));
    }
    out
}

/// The font the plot uses (Debian `fonts-dejavu-core`, installed by `scripts/install-deps.sh`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// A [`QatError::Io`] for drawing or writing the plot file at `path`.
fn plot_error(path: &Path, what: impl std::fmt::Display) -> QatError {
    QatError::Io {
        path: path.display().to_string(),
        message: format!("plot: {what}"),
    }
}

/// Draws the validation curves of `variants` (the metric `y_desc` names, in `unit` — `" %"` or
/// `""` — against epoch) into a PNG at `path`. The legend goes where the curves are not: above
/// falling curves (a loss), below rising ones (an accuracy).
///
/// # Errors
/// [`QatError::Io`] naming the file when the font cannot be read or used ([`FONT`]) or the
/// PNG cannot be drawn or written; [`QatError::Training`] when no variant has a curve to draw.
pub fn plot_curves(
    variants: &[Variant],
    title: &str,
    (y_desc, unit): (&str, &str),
    path: &Path,
) -> Result<()> {
    let font = std::fs::read(FONT).map_err(|e| QatError::Io {
        path: FONT.into(),
        message: format!(
            "cannot read the plot font ({e}); install Debian's fonts-dejavu-core \
             (scripts/install-deps.sh does)"
        ),
    })?;
    // plotters keeps registered fonts for the whole process.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| QatError::Io {
        path: FONT.into(),
        message: "not a usable TrueType font".into(),
    })?;
    let epochs = variants.iter().map(|v| v.curve.len()).max().unwrap_or(0);
    let values = variants.iter().flat_map(|v| v.curve.iter().copied());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if epochs == 0 || !lo.is_finite() {
        return Err(QatError::Training(
            "plot: no validation curve to draw (no variant has an epoch value)".into(),
        ));
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    // Drawn to a temporary file, then renamed: a crash never leaves half a PNG at `path`.
    let tmp = path.with_extension(format!("tmp{}.png", std::process::id()));
    draw(variants, (title, y_desc, unit), &tmp, epochs, lo, hi)?;
    std::fs::rename(&tmp, path).map_err(|e| plot_error(path, e))
}

fn draw(
    variants: &[Variant],
    (title, y_desc, unit): (&str, &str, &str),
    path: &Path,
    epochs: usize,
    lo: f64,
    hi: f64,
) -> Result<()> {
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(1f64..epochs.max(2) as f64, lo..hi)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(epochs.clamp(2, 20))
        .x_label_formatter(&|x| format!("{}", x.round() as usize))
        .y_desc(y_desc)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let falling = variants.iter().all(|v| v.curve.last() <= v.curve.first());
    for (i, v) in variants.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = v
            .curve
            .iter()
            .enumerate()
            .map(|(e, a)| ((e + 1) as f64, *a))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?
            .label(format!("{} ({:.2}{unit})", v.name, v.accuracy()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| plot_error(path, e))?;
    }
    chart
        .configure_series_labels()
        .position(if falling {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        })
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))?;
    Ok(())
}

/// The mean of `xs` and their sample standard deviation (`n - 1` in the denominator; 0 for a
/// single value): how every table of several seeds reports a figure.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    (mean, sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_variant_name_first() {
        let v = |name: &str, curve: Vec<f64>| Variant {
            name: name.into(),
            weights: "w".into(),
            curve,
            seconds: 1.0,
        };
        let table = markdown_table(&[v("fp32", vec![80.0, 88.5]), v("ternary", vec![79.0, 88.0])]);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 2);
        assert!(
            rows[1].starts_with("| ternary | w | 88.00 | -0.50 | 88.00 |"),
            "{}",
            rows[1]
        );
    }
}
