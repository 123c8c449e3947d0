//! A data loader whose batch order is a pure function of the seed and the epoch, so a run
//! resumed from a checkpoint sees exactly the batches an uninterrupted run would.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::Device;

use crate::error::QatError;

/// Shuffles `items` with Fisher–Yates driven by SplitMix64 from `seed`: the same seed gives the
/// same order on every platform and whatever the `rand` version (what [`EpochLoader`] uses for
/// each epoch, and handy for custom training loops).
///
/// # Example
/// ```
/// use bitnet_qat::data::shuffle;
///
/// let (mut a, mut b) = ((0..10).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
/// shuffle(&mut a, 7);
/// shuffle(&mut b, 7);
/// assert_eq!(a, b);
/// assert_ne!(a, (0..10).collect::<Vec<_>>());
/// ```
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A burn `DataLoader` that shuffles epoch `e` with a permutation derived from `(seed, e)`.
///
/// Burn's own loader draws each epoch's permutation from a generator it advances, and forks that
/// generator when the `Learner` moves it to a device, so a resumed run cannot reproduce the
/// order. Here the order is a function of the epoch: [`EpochLoader::iter_epoch`] takes it
/// explicitly (custom loops); through Burn's `DataLoader::iter`, which has no epoch argument,
/// each copy of the loader (`to_device`, `slice`: the copies burn-train makes for its devices)
/// takes the epochs in turn from the one it was copied at, independently of the other copies,
/// starting at [`EpochLoader::starting_epoch`] (what a resumed run sets).
///
/// # Example
/// ```
/// use bitnet_qat::data::{DigitsDataset, EpochLoader, ImageBatcher};
/// use burn::data::dataloader::DataLoader;
///
/// let (train, _) = DigitsDataset::load().unwrap().split(0.2, 42);
/// let device = burn::tensor::Device::flex();
/// let loader = EpochLoader::new(train.clone(), ImageBatcher, 64, &device)?.shuffle(7);
/// let first = loader.iter().next().unwrap().unwrap();
/// // A loader resuming at epoch 0 sees the same first batch.
/// let again = EpochLoader::new(train, ImageBatcher, 64, &device)?.shuffle(7).starting_epoch(0);
/// assert_eq!(first.targets.into_data(), again.iter().next().unwrap().unwrap().targets.into_data());
/// // A batch size of 0 is a typed error, not a panic.
/// assert!(matches!(
///     EpochLoader::new(again_data(), ImageBatcher, 0, &device).map(|_| ()),
///     Err(bitnet_qat::QatError::Config { name, .. }) if name == "EpochLoader.batch_size"
/// ));
/// # fn again_data() -> bitnet_qat::data::DigitsDataset {
/// #     DigitsDataset::load().unwrap()
/// # }
/// # Ok::<(), bitnet_qat::QatError>(())
/// ```
pub struct EpochLoader<I, B> {
    dataset: Arc<dyn Dataset<I>>,
    batcher: Arc<B>,
    batch_size: usize,
    seed: Option<u64>,
    /// Items per epoch when the epochs walk through the dataset (see `EpochLoader::stream`).
    stream: Option<usize>,
    /// The epoch the next `DataLoader::iter` of this copy runs.
    next_epoch: AtomicUsize,
    range: Range<usize>,
    device: Device,
}

impl<I, B> Clone for EpochLoader<I, B> {
    /// A copy that goes on from this one's next epoch, with its own count.
    fn clone(&self) -> Self {
        Self {
            dataset: self.dataset.clone(),
            batcher: self.batcher.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
            stream: self.stream,
            next_epoch: AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst)),
            range: self.range.clone(),
            device: self.device.clone(),
        }
    }
}

impl<I: 'static, B> EpochLoader<I, B> {
    /// Batches of `batch_size` (the last may be smaller) in dataset order, on `device`.
    ///
    /// # Errors
    /// [`QatError::Config`] (`EpochLoader.batch_size`) for a batch size of 0.
    pub fn new(
        dataset: impl Dataset<I> + 'static,
        batcher: B,
        batch_size: usize,
        device: &Device,
    ) -> crate::Result<Self> {
        if batch_size == 0 {
            return Err(QatError::config("EpochLoader.batch_size", 0, "> 0"));
        }
        let len = dataset.len();
        Ok(Self {
            dataset: Arc::new(dataset),
            batcher: Arc::new(batcher),
            batch_size,
            seed: None,
            stream: None,
            next_epoch: AtomicUsize::new(0),
            range: 0..len,
            device: device.clone(),
        })
    }

    /// Shuffles every epoch with a permutation derived from `seed` and the epoch number.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Epochs of `items` items that walk through the dataset instead of repeating it: epoch `e`
    /// is items `e · items .. (e + 1) · items` (wrapping around), shuffled if
    /// [`EpochLoader::shuffle`] is set. For a dataset that is one long stream of samples (such
    /// as [`TokenWindows::random`](crate::lm::TokenWindows::random) sized for a whole run), so each
    /// epoch (a checkpoint interval) sees new ones.
    ///
    /// # Errors
    /// [`QatError::Config`] (`EpochLoader.stream`) for 0 items.
    pub fn stream(mut self, items: usize) -> crate::Result<Self> {
        if items == 0 {
            return Err(QatError::config(
                "EpochLoader.stream",
                0,
                "> 0 items an epoch",
            ));
        }
        self.stream = Some(items);
        Ok(self)
    }

    /// The next `DataLoader::iter` runs epoch `epoch` (0-based): a run resumed after `k` epochs
    /// starts at `k`.
    pub fn starting_epoch(self, epoch: usize) -> Self {
        self.next_epoch.store(epoch, Ordering::SeqCst);
        self
    }

    /// The batches of epoch `epoch` (0-based), whatever was iterated before.
    pub fn iter_epoch<O>(&self, epoch: usize) -> Box<dyn DataLoaderIterator<O> + '_>
    where
        B: Batcher<I, O> + 'static,
        O: 'static,
    {
        Box::new(EpochIter {
            loader: self,
            order: self.order(epoch),
            position: 0,
            output: PhantomData,
        })
    }

    /// Items per epoch: the stream's, or the whole range (none of an empty range).
    fn epoch_len(&self) -> usize {
        match self.stream {
            Some(n) if !self.range.is_empty() => n,
            _ => self.range.len(),
        }
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        // Epoch `e` of a stream starts `e · n` items in; every other epoch at the start.
        let len = self.range.len();
        let first = match self.stream {
            Some(n) if len > 0 => epoch.wrapping_mul(n) % len,
            _ => 0,
        };
        let mut order: Vec<usize> = (0..self.epoch_len())
            .map(|i| self.range.start + (first + i) % len)
            .collect();
        if let Some(seed) = self.seed {
            let mixed = seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            shuffle(&mut order, mixed);
        }
        order
    }
}

struct EpochIter<'a, I, O, B> {
    loader: &'a EpochLoader<I, B>,
    order: Vec<usize>,
    position: usize,
    output: PhantomData<fn() -> O>,
}

impl<I, O, B> Iterator for EpochIter<'_, I, O, B>
where
    B: Batcher<I, O>,
{
    type Item = Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.order.len() {
            return None;
        }
        let end = (self.position + self.loader.batch_size).min(self.order.len());
        let indices = self.order[self.position..end].to_vec();
        self.position = end;
        Some(
            self.loader
                .dataset
                .get_many(indices)
                .map(|items| self.loader.batcher.batch(items, &self.loader.device)),
        )
    }
}

impl<I, O, B> DataLoaderIterator<O> for EpochIter<'_, I, O, B>
where
    B: Batcher<I, O>,
{
    fn progress(&self) -> Progress {
        Progress::new(self.position, self.order.len(), Some("items".to_string()))
    }
}

impl<I, O, B> DataLoader<O> for EpochLoader<I, B>
where
    I: Send + Sync + 'static,
    O: 'static,
    B: Batcher<I, O> + 'static,
{
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        self.iter_epoch(self.next_epoch.fetch_add(1, Ordering::SeqCst))
    }

    fn num_items(&self) -> usize {
        self.epoch_len()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        let mut loader = self.clone();
        loader.device = device.clone();
        Arc::new(loader)
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        let mut loader = self.clone();
        let base = self.range.start;
        loader.range = (base + start).min(self.range.end)..(base + end).min(self.range.end);
        Arc::new(loader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DigitsDataset, ImageBatch, ImageBatcher};

    fn labels(loader: &EpochLoader<crate::data::DigitItem, ImageBatcher>) -> Vec<Vec<i64>> {
        batch_labels(loader.iter())
    }

    fn batch_labels(
        batches: impl Iterator<Item = Result<ImageBatch, DatasetError>>,
    ) -> Vec<Vec<i64>> {
        batches
            .map(|b| {
                let b = b.unwrap();
                b.targets.into_data().convert::<i64>().try_to_vec().unwrap()
            })
            .collect()
    }

    #[test]
    fn epochs_are_reproducible_across_copies_and_resumes() {
        let (data, _) = DigitsDataset::load().unwrap().split(0.9, 1);
        let device = Device::flex();
        let loader = EpochLoader::new(data.clone(), ImageBatcher, 50, &device)
            .unwrap()
            .shuffle(3);
        assert_eq!(DataLoader::<ImageBatch>::num_items(&loader), 180);
        let e0 = labels(&loader);
        let moved = loader.to_device(&device);
        let e1 = batch_labels(moved.iter());
        assert_eq!(
            e0.iter().map(Vec::len).collect::<Vec<_>>(),
            [50, 50, 50, 30]
        );
        assert_ne!(e0, e1, "each epoch has its own order");
        let mut sorted0: Vec<i64> = e0.concat();
        let mut all: Vec<i64> = data.items().iter().map(|i| i64::from(i.label)).collect();
        sorted0.sort();
        all.sort();
        assert_eq!(sorted0, all, "an epoch is a permutation");
        let resumed = EpochLoader::new(data.clone(), ImageBatcher, 50, &device)
            .unwrap()
            .shuffle(3)
            .starting_epoch(1);
        assert_eq!(labels(&resumed), e1);
        // The explicit epoch gives the same batches, whatever ran before.
        let explicit = batch_labels(loader.iter_epoch::<ImageBatch>(1));
        assert_eq!(explicit, e1);
    }

    #[test]
    fn copies_for_devices_count_their_own_epochs() {
        let (data, _) = DigitsDataset::load().unwrap().split(0.9, 1);
        let device = Device::flex();
        let loader = EpochLoader::new(data, ImageBatcher, 30, &device)
            .unwrap()
            .shuffle(5);
        // Two device slices, as burn-train makes them: each runs epochs 0, 1, ... on its part,
        // however their calls interleave.
        let (a, b) = (
            DataLoader::<ImageBatch>::slice(&loader, 0, 90),
            DataLoader::<ImageBatch>::slice(&loader, 90, 180),
        );
        let first = |l: &Arc<dyn DataLoader<ImageBatch>>| {
            l.iter()
                .next()
                .unwrap()
                .unwrap()
                .targets
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .unwrap()
        };
        let (a0, b0, a1, b1) = (first(&a), first(&b), first(&a), first(&b));
        let fresh = DataLoader::<ImageBatch>::slice(&loader, 0, 90);
        assert_eq!(first(&fresh), a0, "slice a's epoch 0");
        assert_eq!(first(&fresh), a1, "slice a's epoch 1");
        let fresh = DataLoader::<ImageBatch>::slice(&loader, 90, 180);
        assert_eq!((first(&fresh), first(&fresh)), (b0, b1));
        assert_ne!(a0, a1);
    }

    #[test]
    fn streamed_epochs_walk_through_the_dataset() {
        let (data, _) = DigitsDataset::load().unwrap().split(0.9, 1);
        let all: Vec<i64> = data.items().iter().map(|i| i64::from(i.label)).collect();
        let device = Device::flex();
        let loader = EpochLoader::new(data, ImageBatcher, 50, &device)
            .unwrap()
            .stream(50)
            .unwrap();
        assert_eq!(DataLoader::<ImageBatch>::num_items(&loader), 50);
        let epoch = |e: usize| batch_labels(loader.iter_epoch::<ImageBatch>(e)).concat();
        assert_eq!(epoch(0), all[..50]);
        assert_eq!(epoch(1), all[50..100]);
        // 180 items: epoch 3 wraps around.
        assert_eq!(epoch(3), [&all[150..], &all[..20]].concat());
        // Through `DataLoader::iter`, resumed at epoch 1.
        let resumed = EpochLoader::new(
            DigitsDataset::load().unwrap().split(0.9, 1).0,
            ImageBatcher,
            50,
            &device,
        )
        .unwrap()
        .stream(50)
        .unwrap()
        .starting_epoch(1);
        assert_eq!(labels(&resumed).concat(), all[50..100]);
    }
}
