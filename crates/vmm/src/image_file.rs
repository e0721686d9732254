//! Opening the files a guest boots from (kernel, initrd), with errors that name the file and
//! what it was meant to be. Portable: every machine uses it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::config::KernelImage;
use crate::{Error, Result};

/// Opens `path` for reading; a directory or an empty file is an error naming `what` it is.
pub(crate) fn open(path: &Path, what: &'static str) -> Result<File> {
    let err = |source| Error::ReadFile {
        what,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if meta.is_dir() {
        return Err(err(std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    if meta.len() == 0 {
        return Err(Error::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// The whole of a kernel or initrd image.
pub(crate) fn read_all(image: &KernelImage, what: &'static str) -> Result<Vec<u8>> {
    match image {
        KernelImage::Bytes(b) => Ok(b.to_vec()),
        KernelImage::Path(path) => {
            let mut bytes = Vec::new();
            open(path, what)?
                .read_to_end(&mut bytes)
                .map_err(|source| Error::ReadFile {
                    what,
                    path: path.clone(),
                    source,
                })?;
            Ok(bytes)
        }
    }
}
