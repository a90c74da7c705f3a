//! Plumbing shared by the kernels: reading candle CPU storage as f32 slices,
//! choosing between the kernel and the composition, and splitting rows over
//! rayon's threads only when there is enough work to pay for it.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements of work (roughly: row length × rows) below which a kernel runs on the
/// calling thread. Waking a rayon worker costs a few microseconds, about the time
/// an AVX2 kernel needs for 16k elements.
pub const MIN_PARALLEL_WORK: usize = 1 << 15;

/// How a public function computes its result for a given input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// f32 on the CPU: the kernel.
    Kernel,
    /// f16 / bf16 on the CPU: converted to f32, the kernel, converted back (as
    /// PyTorch computes these ops in f32 for half inputs).
    KernelViaF32,
    /// Any other device, or f64: the plain candle composition.
    Composition,
}

/// Picks the route for `x`; integer dtypes are an error naming `op`.
pub(crate) fn route(op: &str, x: &Tensor) -> Result<Route> {
    let dtype = x.dtype();
    if !dtype.is_float() {
        bail!("{op}: unsupported dtype {dtype:?}, expected f32, f16, bf16 or f64")
    }
    Ok(match (x.device(), dtype) {
        (Device::Cpu, DType::F32) => Route::Kernel,
        (Device::Cpu, DType::F16 | DType::BF16) => Route::KernelViaF32,
        _ => Route::Composition,
    })
}

/// Checks that every tensor shares `x`'s dtype and device.
pub(crate) fn same_kind(op: &str, x: &Tensor, others: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in others {
        if t.dtype() != x.dtype() {
            bail!("{op}: {name} has dtype {:?}, the input {:?}", t.dtype(), x.dtype())
        }
        if !t.device().same_device(x.device()) {
            bail!(
                "{op}: {name} is on {:?}, the input on {:?}",
                t.device().location(),
                x.device().location()
            )
        }
    }
    Ok(())
}

/// The f32 elements of contiguous CPU storage.
pub(crate) fn f32_slice<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: the kernel takes f32, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{op}: the kernel needs a contiguous input, got strides {:?}",
            layout.stride()
        ),
    }
}

/// Runs `f` on the f32 elements of a CPU tensor, made contiguous first.
pub(crate) fn with_f32<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(op, cpu, layout)?),
        _ => bail!("{op}: the kernel runs on the CPU, got {:?}", t.device().location()),
    }
}

/// A new CPU tensor holding `data`.
pub(crate) fn from_vec(data: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(data, shape.clone(), &Device::Cpu)
}

/// A buffer of `len` floats for a kernel to fill, left uninitialised: zeroing a
/// large output first costs as much as a light kernel's whole pass over it.
///
/// Every caller writes every element before the buffer is read or handed to candle.
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    advise_huge_pages(&mut v);
    // SAFETY: f32 has no invalid bit patterns and the kernels write each element
    // (through raw pointers or slices) before anything reads it.
    unsafe { v.set_len(len) };
    v
}

/// Floats of scratch a thread keeps between calls (attention's transposed keys and
/// values, a linear layer's transposed product): 32 MiB, GPT-2's keys and values at
/// 4,096 tokens.
const SCRATCH_KEPT: usize = 8 << 20;

/// Runs `f` on `len` floats of scratch for it to fill. The calling thread keeps
/// the buffer for its next call (up to [`SCRATCH_KEPT`]), so that a model's layers
/// do not fault in and zero fresh pages for it every time.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buffer = SCRATCH.take();
    if buffer.len() < len {
        buffer = output_buffer(len);
    }
    let result = f(&mut buffer[..len]);
    if buffer.len() <= SCRATCH_KEPT {
        SCRATCH.set(buffer);
    }
    result
}

/// Bytes from which an output is worth backing with 2 MiB pages.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Whether the kernels advise their outputs of 4 MiB or more to use transparent
/// huge pages (on by default; Linux only). Turning it off gives back the OS's
/// 4 KiB granularity for those buffers at the cost of the page-fault time below;
/// it exists mainly to measure that cost. Applies to the whole process.
pub fn set_huge_pages(enabled: bool) {
    HUGE_PAGES.store(enabled, Ordering::Relaxed);
}

/// Asks Linux to back a large, not yet touched buffer with transparent huge pages.
///
/// A large output is a fresh mapping on every call (glibc returns big blocks to the
/// OS when they are freed), so its first write faults in every page. With 4 KiB
/// pages that fault handling took about two thirds of a 50 MB softmax; with 2 MiB
/// pages there are 512 times fewer faults. PyTorch offers the same advice for its
/// CPU tensors (`THP_MEM_ALLOC_ENABLE`). Only the 2 MiB-aligned interior is advised,
/// and a refusal (huge pages disabled) changes nothing but speed.
fn advise_huge_pages(buffer: &mut Vec<f32>) {
    let bytes = buffer.capacity() * std::mem::size_of::<f32>();
    if bytes < HUGE_PAGE_MIN_BYTES || !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let aligned_start = start.next_multiple_of(HUGE_PAGE);
        let aligned_end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
        if aligned_end > aligned_start {
            // SAFETY: the range lies inside the buffer's own allocation, and the advice
            // changes how its pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    aligned_start as *mut libc::c_void,
                    aligned_end - aligned_start,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
}

/// How many tasks to cut `rows` rows costing `row_cost` each into: 1 when the
/// whole job is small or there is one thread, else enough to balance the threads.
pub(crate) fn tasks_for(rows: usize, row_cost: usize) -> usize {
    let threads = rayon::current_num_threads();
    let work = rows.saturating_mul(row_cost.max(1));
    if threads <= 1 || work < 2 * MIN_PARALLEL_WORK || rows <= 1 {
        return 1;
    }
    (work / MIN_PARALLEL_WORK).clamp(1, 4 * threads).min(rows)
}

/// Calls `f(first_row, rows_of_out)` on consecutive groups of rows of `out`
/// (`row_len` floats each), in parallel when the work is large enough.
pub(crate) fn for_row_chunks(
    out: &mut [f32],
    row_len: usize,
    row_cost: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let tasks = tasks_for(rows, row_cost);
    if tasks == 1 {
        f(0, out);
        return;
    }
    let rows_per_task = rows.div_ceil(tasks);
    out.par_chunks_mut(rows_per_task * row_len)
        .enumerate()
        .for_each(|(i, chunk)| f(i * rows_per_task, chunk));
}

/// Like [`for_row_chunks`], collecting one value per group (for partial sums).
pub(crate) fn map_row_chunks<R: Send>(
    out: &mut [f32],
    row_len: usize,
    row_cost: usize,
    f: impl Fn(usize, &mut [f32]) -> R + Sync + Send,
) -> Vec<R> {
    if row_len == 0 || out.is_empty() {
        return Vec::new();
    }
    let rows = out.len() / row_len;
    let tasks = tasks_for(rows, row_cost);
    if tasks == 1 {
        return vec![f(0, out)];
    }
    let rows_per_task = rows.div_ceil(tasks);
    out.par_chunks_mut(rows_per_task * row_len)
        .enumerate()
        .map(|(i, chunk)| f(i * rows_per_task, chunk))
        .collect()
}

/// Offsets of the rows of a strided tensor (last dimension contiguous), in row order.
pub(crate) fn row_offsets(layout: &Layout) -> Vec<usize> {
    let dims = layout.dims();
    let strides = layout.stride();
    let lead = &dims[..dims.len().saturating_sub(1)];
    let rows: usize = lead.iter().product();
    let mut offsets = Vec::with_capacity(rows);
    let mut index = vec![0usize; lead.len()];
    for _ in 0..rows {
        let offset = index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        offsets.push(layout.start_offset() + offset);
        for d in (0..lead.len()).rev() {
            index[d] += 1;
            if index[d] < lead[d] {
                break;
            }
            index[d] = 0;
        }
    }
    offsets
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping holding `address`, from /proc/self/smaps.
    fn vm_flags_at(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                    inside = (start..end).contains(&address);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.trim().to_string();
                }
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    fn advised(buffer: &[f32]) -> bool {
        let middle = buffer.as_ptr() as usize + buffer.len() * 2; // a byte inside the aligned interior
        vm_flags_at(middle).split(' ').any(|f| f == "hg")
    }

    #[test]
    fn large_outputs_are_advised_to_use_huge_pages_unless_turned_off() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("this kernel has no transparent huge pages: nothing to advise");
            return;
        }
        // Both buffers stay alive, so the second cannot reuse the first's mapping.
        set_huge_pages(false);
        let plain = output_buffer(HUGE_PAGE_MIN_BYTES); // 4x the minimum, in bytes
        set_huge_pages(true);
        let advised_buffer = output_buffer(HUGE_PAGE_MIN_BYTES);
        assert!(
            !advised(&plain),
            "advised although turned off: {}",
            vm_flags_at(plain.as_ptr() as usize)
        );
        assert!(
            advised(&advised_buffer),
            "not advised: {}",
            vm_flags_at(advised_buffer.as_ptr() as usize)
        );
    }
}

/// A raw pointer that may cross threads, for tasks that each write their own part
/// of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
