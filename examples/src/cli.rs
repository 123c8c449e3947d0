//! Command-line flags the examples share, flattened into each example's clap arguments with
//! `#[command(flatten)]`.

use std::path::PathBuf;

use bitnet_qat::Result;
use bitnet_qat::data::{FASHION_MNIST_DIR, IdxDataset, Split};
use burn::tensor::Device;

/// `--device`: the device to train and run on.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Device: flex (CPU), ndarray, wgpu, vulkan, metal, webgpu or cuda (those enabled by
    /// cargo features); default: the enabled GPU feature, else flex.
    #[arg(long = "device", value_name = "DEVICE", default_value = crate::device::default_name())]
    pub name: String,
}

impl DeviceArg {
    /// The device, or an error naming the devices this build has.
    pub fn device(&self) -> Result<Device> {
        crate::device::device(&self.name)
    }
}

/// `--data` and `--limit`: where the Fashion-MNIST files are, and how many training images to
/// use.
#[derive(clap::Args, Debug, Clone)]
pub struct FashionMnistArgs {
    /// Folder with the IDX files (train-images-idx3-ubyte[.gz], ...).
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    pub data: PathBuf,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl FashionMnistArgs {
    /// The training set (the first `--limit` images) and the test set.
    pub fn load(&self) -> Result<(IdxDataset, IdxDataset)> {
        let mut train = IdxDataset::load(&self.data, Split::Train)?;
        if let Some(n) = self.limit {
            train = train.take(n);
        }
        Ok((train, IdxDataset::load(&self.data, Split::Test)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        data: FashionMnistArgs,
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let args = Args::parse_from(["x", "--limit", "5"]);
        assert_eq!(args.device.name, crate::device::default_name());
        assert_eq!(args.data.data, PathBuf::from(FASHION_MNIST_DIR));
        assert_eq!(args.data.limit, Some(5));
        let args = Args::parse_from(["x", "--device", "flex", "--data", "/d"]);
        assert!(args.device.device().is_ok());
        assert_eq!(args.data.data, PathBuf::from("/d"));
        assert_eq!(args.data.limit, None);
        let args = Args::parse_from(["x", "--device", "tpu"]);
        let err = args.device.device().unwrap_err().to_string();
        assert!(err.contains("unknown or disabled device \"tpu\""), "{err}");
    }
}
