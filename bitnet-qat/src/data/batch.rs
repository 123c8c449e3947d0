//! Batching images for Burn data loaders.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{DigitItem, ImageItem};

/// A batch of flattened images `[batch, pixels]` and their classes `[batch]`.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// Row-major pixels in `[0, 1]`, one image per row.
    pub images: Tensor<2>,
    /// The class of each image.
    pub targets: Tensor<1, Int>,
}

/// Stacks [`DigitItem`]s or [`ImageItem`]s into an [`ImageBatch`], for
/// `burn::data::dataloader::DataLoaderBuilder`.
///
/// # Example
/// ```
/// use bitnet_qat::data::{DigitsDataset, ImageBatcher};
/// use burn::data::dataloader::DataLoaderBuilder;
///
/// let (train, _) = DigitsDataset::load().unwrap().split(0.2, 42);
/// let loader = DataLoaderBuilder::new(ImageBatcher)
///     .batch_size(64)
///     .shuffle(42)
///     .set_device(burn::tensor::Device::flex())
///     .build(train);
/// let batch = loader.iter().next().unwrap().unwrap();
/// assert_eq!(batch.images.dims(), [64, 64]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageBatcher;

fn stack(pixels: Vec<f32>, labels: Vec<i64>, width: usize, device: &Device) -> ImageBatch {
    let n = labels.len();
    ImageBatch {
        images: Tensor::from_data(TensorData::new(pixels, [n, width]), device),
        targets: Tensor::from_data(TensorData::new(labels, [n]), device),
    }
}

impl Batcher<DigitItem, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<DigitItem>, device: &Device) -> ImageBatch {
        let labels = items.iter().map(|i| i64::from(i.label)).collect();
        let pixels = items.iter().flat_map(|i| i.pixels).collect();
        stack(pixels, labels, super::DIGITS_PIXELS, device)
    }
}

impl Batcher<ImageItem, ImageBatch> for ImageBatcher {
    /// # Panics
    /// If the images do not all have the same number of pixels (never for one [`super::IdxDataset`]).
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> ImageBatch {
        let width = items.first().map_or(0, |i| i.pixels.len());
        assert!(
            items.iter().all(|i| i.pixels.len() == width),
            "images of different sizes in one batch"
        );
        let labels = items.iter().map(|i| i64::from(i.label)).collect();
        let pixels = items.into_iter().flat_map(|i| i.pixels).collect();
        stack(pixels, labels, width, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_pixels_and_labels_in_order() {
        let device = Device::flex();
        let items = vec![
            ImageItem {
                pixels: vec![0.0, 0.5, 1.0],
                label: 7,
            },
            ImageItem {
                pixels: vec![0.25, 0.0, 0.75],
                label: 2,
            },
        ];
        let b = ImageBatcher.batch(items, &device);
        b.images.into_data().assert_eq(
            &TensorData::from([[0.0f32, 0.5, 1.0], [0.25, 0.0, 0.75]]),
            false,
        );
        assert_eq!(
            b.targets
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .unwrap(),
            vec![7, 2]
        );
    }
}
