//! The fs model test, on any mount (a backing directory, object storage).

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use super::{Rng, TestMount};

/// Random writes, reads, truncates, renames and unlinks against an in-memory model.
/// (The mount's chunk size should be small, 4096, so that writes cross chunks.)
pub fn run(mount: &TestMount, seed: u64, steps: usize) {
    let cache = mount.options.cache;
    let mut rng = Rng(seed);
    let names = ["a", "b", "c", "d/e"];
    fs::create_dir(mount.path("d")).unwrap();
    let mut model: [Option<Vec<u8>>; 4] = Default::default();
    for step in 0..steps {
        let i = rng.below(names.len() as u64) as usize;
        let path = mount.path(names[i]);
        let ctx = format!("seed {seed} step {step} file {} {cache:?}", names[i]);
        match rng.below(10) {
            0..=3 => {
                let offset = rng.below(48 * 1024) as usize;
                let len = rng.below(20 * 1024) as usize + 1;
                let data = rng.bytes(len);
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .unwrap();
                file.write_all_at(&data, offset as u64).unwrap();
                let m = model[i].get_or_insert_with(Vec::new);
                if m.len() < offset + data.len() {
                    m.resize(offset + data.len(), 0);
                }
                m[offset..offset + data.len()].copy_from_slice(&data);
            }
            4..=5 => match &model[i] {
                Some(m) => {
                    let offset = rng.below(m.len() as u64 + 100) as usize;
                    let len = rng.below(30 * 1024) as usize;
                    let mut buf = vec![0u8; len];
                    let file = File::open(&path).unwrap();
                    let mut got = 0;
                    while got < len {
                        let n = file
                            .read_at(&mut buf[got..], (offset + got) as u64)
                            .unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let want = &m[offset.min(m.len())..(offset + len).min(m.len())];
                    assert_eq!(&buf[..got], want, "{ctx}: read {offset}+{len}");
                    assert_eq!(
                        fs::metadata(&path).unwrap().len(),
                        m.len() as u64,
                        "{ctx}: size"
                    );
                }
                None => assert_eq!(
                    File::open(&path).unwrap_err().kind(),
                    ErrorKind::NotFound,
                    "{ctx}"
                ),
            },
            6 => {
                if let Some(m) = &mut model[i] {
                    let size = rng.below(60 * 1024) as usize;
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(size as u64)
                        .unwrap();
                    m.resize(size, 0);
                }
            }
            7..=8 => {
                let j = rng.below(names.len() as u64) as usize;
                if model[i].is_some() && i != j {
                    fs::rename(&path, mount.path(names[j])).unwrap();
                    model[j] = model[i].take();
                }
            }
            _ => {
                if model[i].take().is_some() {
                    fs::remove_file(&path).unwrap();
                }
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        match &model[i] {
            Some(m) => assert_eq!(&fs::read(mount.path(name)).unwrap(), m, "final {name}"),
            None => assert!(!mount.path(name).exists()),
        }
    }
}
