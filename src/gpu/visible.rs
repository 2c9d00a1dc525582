//! Which GPUs the server can see, as TorchServe 0.12's `ConfigManager.getAvailableGpu` finds
//! them: the `CUDA_VISIBLE_DEVICES` list when the variable is set, else the indices
//! `nvidia-smi` lists (none when it is absent or fails).

use super::NvidiaSmi;

/// The visible GPUs in CUDA's order: each entry names one for `nvidia-smi` (an index or a
/// UUID); worker `gpu_id` N is the N-th entry. Blocks: runs `nvidia-smi` when
/// `CUDA_VISIBLE_DEVICES` is unset.
pub fn detect() -> (Vec<String>, &'static str) {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) => (from_cuda_visible_devices(&list), "CUDA_VISIBLE_DEVICES"),
        Err(_) => {
            let listed = NvidiaSmi::find()
                .and_then(|smi| smi.query(&["--query-gpu=index", "--format=csv,noheader"]))
                .map(|csv| indices(&csv))
                .unwrap_or_default();
            (listed, "nvidia-smi")
        }
    }
}

/// The devices a `CUDA_VISIBLE_DEVICES` value makes visible, read as CUDA reads it: indices
/// or `GPU-`/`MIG-` UUIDs separated by commas, up to the first entry that is neither (or is
/// repeated), so `""` and `"-1"` hide every GPU.
fn from_cuda_visible_devices(list: &str) -> Vec<String> {
    let mut devices: Vec<String> = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let valid = entry.parse::<u32>().is_ok()
            || ["GPU-", "MIG-"]
                .iter()
                .any(|p| entry.len() > p.len() && entry.starts_with(p));
        if !valid || devices.iter().any(|d| d == entry) {
            break;
        }
        devices.push(entry.to_string());
    }
    devices
}

/// The GPU indices of `nvidia-smi --query-gpu=index --format=csv,noheader`.
fn indices(csv: &str) -> Vec<String> {
    csv.lines()
        .map(str::trim)
        .filter(|line| line.parse::<u32>().is_ok())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_lists_indices_and_uuids() {
        assert_eq!(from_cuda_visible_devices("0,1,2"), ["0", "1", "2"]);
        assert_eq!(from_cuda_visible_devices(" 3, 1 "), ["3", "1"]);
        assert_eq!(
            from_cuda_visible_devices("GPU-8932f937,MIG-1a2b"),
            ["GPU-8932f937", "MIG-1a2b"]
        );
    }

    #[test]
    fn cuda_visible_devices_stops_at_the_first_bad_entry() {
        assert!(from_cuda_visible_devices("").is_empty());
        assert!(from_cuda_visible_devices("-1").is_empty());
        assert_eq!(from_cuda_visible_devices("0,2,-1,1"), ["0", "2"]);
        assert_eq!(from_cuda_visible_devices("1,x"), ["1"]);
        assert_eq!(from_cuda_visible_devices("0,0,1"), ["0"]);
        assert!(from_cuda_visible_devices("GPU-").is_empty());
    }

    #[test]
    fn nvidia_smi_indices() {
        assert_eq!(indices("0\n1\n"), ["0", "1"]);
        assert!(indices("").is_empty());
        assert_eq!(indices("No devices were found\n"), Vec::<String>::new());
    }
}
