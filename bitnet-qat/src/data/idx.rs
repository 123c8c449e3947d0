//! MNIST-format (IDX) image classification datasets: MNIST and Fashion-MNIST.
//!
//! Reads the four IDX files of a split from any directory, plain or gzip-compressed:
//! `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
//! `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`. Fashion-MNIST installs offline
//! as Debian's `dataset-fashion-mnist` (files under [`FASHION_MNIST_DIR`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{QatError, Result};

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// IDX magic number of an unsigned-byte 3-D array (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic number of an unsigned-byte 1-D array (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Which half of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training files (`train-*`).
    Train,
    /// The test files (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// One image and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageItem {
    /// Row-major pixels scaled to `[0, 1]`.
    pub pixels: Vec<f32>,
    /// The class, `0..10`.
    pub label: u8,
}

/// An IDX image classification dataset held in memory as bytes.
///
/// # Example
/// ```no_run
/// use bitnet_qat::data::{IdxDataset, Split, FASHION_MNIST_DIR};
/// let train = IdxDataset::load(FASHION_MNIST_DIR, Split::Train)?;
/// assert_eq!(train.len(), 60_000);
/// # Ok::<(), bitnet_qat::QatError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct IdxDataset {
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl IdxDataset {
    /// Loads a split from `dir`. A missing directory or file is a [`QatError::Dataset`] that
    /// says how to get the data; an unreadable one a [`QatError::Io`]; a truncated or malformed
    /// file a [`QatError::File`] naming the field and its byte offset.
    pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let images = read_maybe_gz(dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
        let labels = read_maybe_gz(dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
        Self::from_idx_bytes(&images, &labels)
    }

    /// Parses the gzip-compressed contents of an images file and a labels file, decompressing
    /// each to at most [`MAX_IDX_BYTES`] (a hostile archive cannot exhaust memory): a
    /// [`QatError::File`] (format `gzip`) for an archive that is not one.
    pub fn from_idx_gz_bytes(images: &[u8], labels: &[u8]) -> Result<Self> {
        Self::from_idx_bytes(&gunzip(images, "images")?, &gunzip(labels, "labels")?)
    }

    /// Parses the contents of an images file and a labels file: a [`QatError::File`] (format
    /// `IDX`, path `images` or `labels`) naming the field and its byte offset for a truncated or
    /// malformed one.
    pub fn from_idx_bytes(images: &[u8], labels: &[u8]) -> Result<Self> {
        let (dims, pixels) = parse_idx(images, IMAGES_MAGIC, 3, "images")?;
        let (ldims, labels) = parse_idx(labels, LABELS_MAGIC, 1, "labels")?;
        if dims[0] != ldims[0] {
            return Err(idx_error(
                "labels",
                "count",
                Some(4),
                format!("{} labels for {} images", ldims[0], dims[0]),
            ));
        }
        if let Some(i) = labels.iter().position(|l| *l > 9) {
            return Err(idx_error(
                "labels",
                format!("label {i}"),
                Some(8 + i as u64),
                format!("{} (classes are 0..=9)", labels[i]),
            ));
        }
        Ok(Self {
            rows: dims[1],
            cols: dims[2],
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// The labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The first `n` images (or all), for quick runs.
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.pixels_per_image());
        self.labels.truncate(n);
        self
    }

    /// Images `[indices.len(), rows * cols]` scaled to `[0, 1]` and labels `[indices.len()]`.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let p = self.pixels_per_image();
        let mut pixels = Vec::with_capacity(indices.len() * p);
        for &i in indices {
            pixels.extend(
                self.pixels[i * p..(i + 1) * p]
                    .iter()
                    .map(|v| *v as f32 / 255.0),
            );
        }
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        (
            Tensor::from_data(TensorData::new(pixels, [indices.len(), p]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }
}

impl Dataset<ImageItem> for IdxDataset {
    /// # Panics
    /// If `index >= len()`, as `Dataset` requires.
    fn get(&self, index: usize) -> core::result::Result<ImageItem, DatasetError> {
        let p = self.pixels_per_image();
        Ok(ImageItem {
            pixels: self.pixels[index * p..(index + 1) * p]
                .iter()
                .map(|v| *v as f32 / 255.0)
                .collect(),
            label: self.labels[index],
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// Reads `dir/name` or `dir/name.gz`.
fn read_maybe_gz(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let plain = dir.join(name);
    let gz: PathBuf = dir.join(format!("{name}.gz"));
    let io = |path: &Path, e: std::io::Error| QatError::io(path, e);
    if plain.is_file() {
        return std::fs::read(&plain).map_err(|e| io(&plain, e));
    }
    if gz.is_file() {
        let compressed = std::fs::read(&gz).map_err(|e| io(&gz, e))?;
        return gunzip(&compressed, &gz.display().to_string());
    }
    Err(QatError::Dataset(format!(
        "{name} (or {name}.gz) not found in {}. Fashion-MNIST installs with \
         `sudo apt-get install dataset-fashion-mnist` (files under {FASHION_MNIST_DIR}); MNIST \
         and Fashion-MNIST downloads hold the same four IDX files — pass their directory",
        dir.display()
    )))
}

/// The most bytes a gzip-compressed IDX file may decompress to (1 GiB; MNIST's largest file is
/// 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// A [`QatError::File`] of an IDX file (`what`: `images`, `labels`, or a path).
fn idx_error(
    what: &str,
    field: impl Into<String>,
    offset: Option<u64>,
    reason: String,
) -> QatError {
    QatError::File {
        format: "IDX",
        path: what.to_string(),
        field: field.into(),
        offset,
        reason,
    }
}

/// Decompresses gzip `bytes` to at most [`MAX_IDX_BYTES`]; `what` names the file in errors.
fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let gzip = |reason: String| QatError::File {
        format: "gzip",
        path: what.to_string(),
        field: String::new(),
        offset: None,
        reason,
    };
    // Read in chunks into a buffer that grows by doubling but never past the limit (a plain
    // `read_to_end` would double a 1 GiB buffer to 2 GiB for an archive that runs past it).
    let limit = MAX_IDX_BYTES as usize + 1;
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = decoder
            .read(&mut chunk)
            .map_err(|e| gzip(format!("decompressing: {e}")))?;
        if n == 0 {
            break;
        }
        if out.len() + n > limit - 1 {
            return Err(gzip(format!(
                "decompresses to more than {MAX_IDX_BYTES} bytes"
            )));
        }
        if out.capacity() - out.len() < n {
            let wanted = (out.capacity() * 2).clamp(out.len() + n, limit);
            out.reserve_exact(wanted - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// Parses an IDX file of unsigned bytes with `rank` dimensions.
fn parse_idx<'a>(
    bytes: &'a [u8],
    magic: u32,
    rank: usize,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let header = 4 + 4 * rank;
    let truncated = |field: &str| {
        idx_error(
            what,
            field,
            Some(bytes.len() as u64),
            format!(
                "truncated: {} bytes, the header alone needs {header}",
                bytes.len()
            ),
        )
    };
    if bytes.len() < 4 {
        return Err(truncated("magic"));
    }
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .and_then(|w| w.try_into().ok())
            .map(u32::from_be_bytes)
    };
    let found = word(0).unwrap_or_default();
    if found != magic {
        return Err(idx_error(
            what,
            "magic",
            Some(0),
            format!("{found:#010x}, expected {magic:#010x} (is it an IDX {what} file?)"),
        ));
    }
    let dims: Vec<usize> = (1..=rank)
        .map(|i| word(i).map(|w| w as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| truncated("dimensions"))?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| {
            idx_error(
                what,
                "dimensions",
                Some(4),
                format!("{dims:?}: their product overflows"),
            )
        })?;
    let data = &bytes[header..];
    if data.len() != count {
        return Err(idx_error(
            what,
            "data",
            Some(header as u64),
            format!(
                "{}: dimensions {dims:?} need {count} bytes of data, found {}",
                if data.len() < count {
                    "truncated"
                } else {
                    "too long"
                },
                data.len()
            ),
        ));
    }
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [IMAGES_MAGIC, n, rows, cols] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend((0..n * rows * cols).map(|i| (i % 256) as u8));
        b
    }

    fn labels(values: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [LABELS_MAGIC, values.len() as u32] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(values);
        b
    }

    #[test]
    fn generated_files_parse_and_batch() {
        let ds = IdxDataset::from_idx_bytes(&images(3, 2, 2), &labels(&[7, 0, 9])).unwrap();
        assert_eq!((ds.len(), ds.pixels_per_image()), (3, 4));
        let item = ds.get(1).unwrap();
        assert_eq!(item.label, 0);
        assert_eq!(
            item.pixels,
            vec![4.0 / 255.0, 5.0 / 255.0, 6.0 / 255.0, 7.0 / 255.0]
        );
        let (x, y) = ds.batch(&[2, 0], &Device::flex());
        assert_eq!(x.dims(), [2, 4]);
        assert_eq!(
            y.into_data().convert::<i64>().try_to_vec::<i64>().unwrap(),
            vec![9, 7]
        );
    }

    #[test]
    fn files_load_plain_and_gzipped_from_a_directory() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("idx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), images(2, 3, 3)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&labels(&[1, 2])).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
        let ds = IdxDataset::load(&dir, Split::Test).unwrap();
        assert_eq!(ds.labels(), &[1, 2]);
        let missing = IdxDataset::load(&dir, Split::Train).unwrap_err();
        assert!(
            missing.to_string().contains("dataset-fashion-mnist"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn truncated_and_wrong_files_are_typed_errors() {
        let good_images = images(3, 2, 2);
        let good_labels = labels(&[1, 2, 3]);
        for cut in [0, 5, 15, good_images.len() - 1] {
            let err = IdxDataset::from_idx_bytes(&good_images[..cut], &good_labels).unwrap_err();
            assert!(
                matches!(&err, QatError::File { format: "IDX", path, .. } if path == "images"),
                "{err}"
            );
        }
        // Labels where images belong: wrong magic.
        let err = IdxDataset::from_idx_bytes(&good_labels, &good_labels).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        // Counts that disagree, a label above 9, trailing bytes: field and offset.
        let file_error = |r: Result<IdxDataset>, field: &str, at: u64, needle: &str| match r {
            Err(QatError::File {
                field: f,
                offset,
                reason,
                ..
            }) => {
                assert_eq!((f.as_str(), offset), (field, Some(at)), "{reason}");
                assert!(reason.contains(needle), "{needle}: {reason}");
            }
            other => panic!("{needle}: {other:?}"),
        };
        file_error(
            IdxDataset::from_idx_bytes(&good_images, &labels(&[1, 2])),
            "count",
            4,
            "2 labels for 3 images",
        );
        file_error(
            IdxDataset::from_idx_bytes(&good_images, &labels(&[1, 2, 10])),
            "label 2",
            10,
            "0..=9",
        );
        let mut long = good_images.clone();
        long.push(0);
        file_error(
            IdxDataset::from_idx_bytes(&long, &good_labels),
            "data",
            16,
            "too long",
        );
        // Dimensions whose product overflows must not allocate or panic.
        let mut huge = Vec::new();
        for w in [IMAGES_MAGIC, u32::MAX, u32::MAX, u32::MAX] {
            huge.extend_from_slice(&w.to_be_bytes());
        }
        file_error(
            IdxDataset::from_idx_bytes(&huge, &good_labels),
            "dimensions",
            4,
            "overflows",
        );
        // A gzip archive that is not one, and one that decompresses to a valid file.
        assert!(matches!(
            IdxDataset::from_idx_gz_bytes(&good_images, &good_labels),
            Err(QatError::File { format: "gzip", reason, .. }) if reason.contains("decompressing")
        ));
        let gz = |bytes: &[u8]| {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(
            IdxDataset::from_idx_gz_bytes(&gz(&good_images), &gz(&good_labels)).unwrap(),
            IdxDataset::from_idx_bytes(&good_images, &good_labels).unwrap()
        );
    }
}
