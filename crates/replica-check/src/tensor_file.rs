//! Reading and writing safetensors files with errors that say what is wrong
//! and where: the file, the tensor key, what was expected and what was found.
//!
//! A file is memory-mapped, and its whole header is checked against the file's
//! length and the [`ReadLimits`] before a single tensor is allocated; tensors
//! are then materialised one at a time, so a caller that drops each before
//! loading the next (`replica inspect`, `replica diff`) holds about one tensor
//! in memory, not the file. See `docs/reliability.md`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

use crate::{Error, Result};

/// The little-endian u64 header length that opens every safetensors file.
const PREFIX: usize = 8;

/// How much a safetensors file may claim before it is refused, unread. The
/// checks run on the header alone, so a corrupt or hostile length cannot make
/// a reader allocate (or map and touch) more than these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// The JSON header's length (the safetensors crate itself refuses more than 100 MB).
    pub max_header_bytes: u64,
    /// One tensor's data.
    pub max_tensor_bytes: u64,
    /// All tensors of one file together.
    pub max_total_bytes: u64,
    /// How many tensors one header may list: each costs memory to index and to
    /// load even when it holds no data (a 100 MB header lists 1.7 million empty ones).
    pub max_tensors: u64,
}

impl ReadLimits {
    /// 100 MB of header, 16 GiB per tensor, 1 TiB per file, 100,000 tensors per
    /// file (a large checkpoint holds a few thousand).
    pub const DEFAULT: ReadLimits = ReadLimits {
        max_header_bytes: 100_000_000,
        max_tensor_bytes: 16 << 30,
        max_total_bytes: 1 << 40,
        max_tensors: 100_000,
    };

    /// The limits that [`read_safetensors`], [`open_safetensors`] and
    /// [`Bundle::load`](crate::Bundle::load) apply: [`DEFAULT`](Self::DEFAULT)
    /// unless [`set_current`](Self::set_current) changed them.
    pub fn current() -> ReadLimits {
        *CURRENT.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the limits for every later read in this process (the `replica`
    /// command's `--max-tensor-bytes`, `--max-total-bytes` and `--max-tensors`).
    pub fn set_current(limits: ReadLimits) {
        *CURRENT.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = limits;
    }
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static CURRENT: RwLock<ReadLimits> = RwLock::new(ReadLimits::DEFAULT);

/// One tensor as the header describes it; its data is not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's key.
    pub name: String,
    /// The dtype it was stored with.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range within the data section (after the header).
    pub begin: usize,
    /// Where its data ends, from the start of the data section.
    pub end: usize,
}

impl TensorInfo {
    /// How many bytes its data takes.
    pub fn bytes(&self) -> usize {
        self.end - self.begin
    }

    /// The stored dtype's name as `replica` prints it: `f32`, `bf16`, `bool`.
    pub fn dtype_name(&self) -> String {
        stored_dtype_name(self.dtype)
    }
}

/// A safetensors dtype's name as `replica` prints it: `u16`, `bool`, `f8_e4m3`.
pub fn stored_dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// What a checked header says: where the data starts, the tensors by name, the metadata.
#[derive(Clone, Debug)]
struct Index {
    data_start: usize,
    tensors: Vec<TensorInfo>,
    metadata: HashMap<String, String>,
}

/// The tensors of one safetensors file, sorted by key, and its `__metadata__`.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// The tensors by key.
    pub tensors: BTreeMap<String, Tensor>,
    /// The dtype each tensor was stored with, which candle may not keep
    /// (`BOOL` is read as u8, `U16` as u32): compare by these.
    pub dtypes: BTreeMap<String, Dtype>,
    /// The file's `__metadata__` entries.
    pub metadata: HashMap<String, String>,
}

/// An open safetensors file whose header has been checked: tensors are read
/// one at a time with [`load`](Self::load), by positioned reads into memory the
/// tensor then owns. Nothing is mapped, so a file cut short while it is read is
/// an error, not a SIGBUS.
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    len: u64,
    index: Index,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("bytes", &self.len)
            .field("tensors", &self.index.tensors.len())
            .finish()
    }
}

/// Opens and checks a safetensors file under [`ReadLimits::current`].
pub fn open_safetensors(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
    SafetensorsFile::open(path, ReadLimits::current())
}

impl SafetensorsFile {
    /// Opens `path` and checks its header against the file's length and `limits`;
    /// only the header is read, and only once its length has passed the checks.
    pub fn open(path: impl AsRef<Path>, limits: ReadLimits) -> Result<Self> {
        let path = path.as_ref();
        let fail = |message: String| Error::file(path, message);
        let (file, len) = open_regular(path)?;
        check_prefix_len(len).map_err(fail)?;
        let source = Source::File(&file);
        let mut prefix = [0u8; PREFIX];
        source
            .read_at(&mut prefix, 0)
            .map_err(|err| fail(format!("cannot read: {err}")))?;
        let header_len = header_len(prefix, len, limits).map_err(fail)?;
        let mut header = vec![0u8; header_len];
        source
            .read_at(&mut header, PREFIX as u64)
            .map_err(|err| fail(format!("cannot read: {err}")))?;
        let index = index(&header, len, limits).map_err(fail)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.index.tensors.is_empty()
    }

    /// The tensors the header describes, sorted by name.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.index.tensors
    }

    /// One tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index
            .tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.index.tensors[i])
    }

    /// The file's `__metadata__` entries.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.index.metadata
    }

    /// Reads one tensor onto `device`.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self
            .info(name)
            .ok_or_else(|| Error::file(&self.path, format!("has no tensor `{name}`")))?;
        load_tensor(Source::File(&self.file), &self.index, info, device)
            .map_err(|message| Error::file(&self.path, message))
    }

    /// Reads every tensor onto `device`.
    pub fn load_all(&self, device: &Device) -> Result<TensorFile> {
        let mut tensors = BTreeMap::new();
        for info in &self.index.tensors {
            tensors.insert(info.name.clone(), self.load(&info.name, device)?);
        }
        Ok(TensorFile {
            tensors,
            dtypes: stored_dtypes(&self.index),
            metadata: self.index.metadata.clone(),
        })
    }
}

/// Reads a whole safetensors file onto `device` (mapped, checked under [`ReadLimits::current`]).
pub fn read_safetensors(path: impl AsRef<Path>, device: &Device) -> Result<TensorFile> {
    open_safetensors(path)?.load_all(device)
}

/// Reads a small file's bytes (a `config.json`, a suite): a regular file of at
/// most [`ReadLimits::max_header_bytes`], with the path in every error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    let limit = ReadLimits::current().max_header_bytes;
    if len > limit {
        return Err(Error::file(
            path,
            format!("is {len} bytes, over the limit of {limit} bytes for a text file (max_header_bytes)"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: a file that grows while it is read still stops at the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| Error::file(path, format!("cannot read: {err}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::file(
            path,
            format!("grew past the limit of {limit} bytes while read"),
        ));
    }
    Ok(bytes)
}

/// Opens `path` for reading if it is a regular file, with its length. Anything
/// else is refused by kind before a byte is read: a directory, a device such as
/// `/dev/zero` (endless), a FIFO or socket (opened without blocking, so one with no
/// writer cannot hang the command).
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let fail = |message: String| Error::file(path, message);
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|err| fail(format!("cannot read: {err}")))?;
    let meta = file.metadata().map_err(|err| fail(format!("cannot read: {err}")))?;
    if meta.is_dir() {
        return Err(fail("is a directory, expected a file".into()));
    }
    if !meta.is_file() {
        return Err(fail(format!("is {}, expected a regular file", file_kind(&meta))));
    }
    Ok((file, meta.len()))
}

/// What a file that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    let _ = meta;
    "not a regular file"
}

/// Parses safetensors bytes already in memory; `origin` names them in errors.
pub fn parse_safetensors(bytes: &[u8], origin: &Path, device: &Device) -> Result<TensorFile> {
    let fail = |message: String| Error::file(origin, message);
    let len = bytes.len() as u64;
    check_prefix_len(len).map_err(fail)?;
    let limits = ReadLimits::current();
    let prefix = bytes[..PREFIX].try_into().expect("checked: at least the prefix");
    let header_len = header_len(prefix, len, limits).map_err(fail)?;
    let index = index(&bytes[PREFIX..PREFIX + header_len], len, limits).map_err(fail)?;
    let mut tensors = BTreeMap::new();
    for info in &index.tensors {
        tensors.insert(
            info.name.clone(),
            load_tensor(Source::Memory(bytes), &index, info, device).map_err(fail)?,
        );
    }
    Ok(TensorFile {
        tensors,
        dtypes: stored_dtypes(&index),
        metadata: index.metadata,
    })
}

fn stored_dtypes(index: &Index) -> BTreeMap<String, Dtype> {
    index.tensors.iter().map(|t| (t.name.clone(), t.dtype)).collect()
}

fn check_prefix_len(len: u64) -> std::result::Result<(), String> {
    if len < PREFIX as u64 {
        return Err(format!(
            "file is {len} bytes, too short for a safetensors header (at least {PREFIX}): truncated or not safetensors"
        ));
    }
    Ok(())
}

/// One tensor's bytes as a candle tensor. Every value is kept, but not every
/// dtype tag (candle has no bool or u16), so comparisons of stored tensors go by
/// [`TensorInfo::dtype`].
fn load_tensor(
    source: Source<'_>,
    index: &Index,
    info: &TensorInfo,
    device: &Device,
) -> std::result::Result<Tensor, String> {
    let offset = (index.data_start + info.begin) as u64;
    let elements = info.shape.iter().product::<usize>();
    let refuse = |why: &str| {
        Err(format!(
            "tensor `{}`: dtype {} cannot be loaded: {why}",
            info.name,
            info.dtype_name()
        ))
    };
    let shape = info.shape.as_slice();
    let read = |bytes: &mut [u8]| {
        source.read_at(bytes, offset).map_err(|err| {
            format!(
                "tensor `{}`: cannot read bytes {}..{}: {err} (was the file cut short while open?)",
                info.name,
                offset,
                offset + bytes.len() as u64
            )
        })
    };
    let loaded = match info.dtype {
        // Read straight into the memory the tensor keeps: no second copy. Masks
        // (BOOL) are read as their 0/1 bytes.
        Dtype::BOOL | Dtype::U8 => typed::<u8>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::I16 => typed::<i16>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::U32 => typed::<u32>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::I32 => typed::<i32>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::I64 => typed::<i64>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::F16 => typed::<half::f16>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::BF16 => typed::<half::bf16>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::F32 => typed::<f32>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        Dtype::F64 => typed::<f64>(elements, read).map(|v| Tensor::from_vec(v, shape, device)),
        // candle has no u16: widened to u32 (exact).
        Dtype::U16 => typed::<u16>(elements, read)
            .map(|v| Tensor::from_vec(v.into_iter().map(u32::from).collect::<Vec<_>>(), shape, device)),
        // The 4- and 6-bit floats and F8_E8M0: candle keeps them as opaque bytes.
        Dtype::F4 | Dtype::F6_E2M3 | Dtype::F6_E3M2 | Dtype::F8_E8M0 => {
            let mut bytes = vec![0u8; info.end - info.begin];
            read(&mut bytes).map(|()| {
                TensorView::new(info.dtype, info.shape.clone(), &bytes)
                    .map_err(|err| candle_core::Error::Msg(err.to_string()))
                    .and_then(|view| view.load(device))
            })
        }
        // candle 0.11's f8e4m3 `WithDType::to_f64` calls itself, so widening to
        // f64 (`inspect`'s statistics, `to_dtype(F64)`) never returns.
        Dtype::F8_E4M3 => return refuse("candle 0.11 never finishes converting it to f64"),
        // I8, U64, F8_E5M2, the FNUZ float8s, C64, and any dtype safetensors adds:
        // refused by name rather than read as something else.
        _ => return refuse("candle has no such dtype"),
    }?;
    loaded.map_err(|err| {
        format!(
            "tensor `{}`: cannot load {:?} {:?}: {err}",
            info.name, info.dtype, info.shape
        )
    })
}

/// `elements` values of `T` filled by `read` from their little-endian bytes.
fn typed<T: Copy + Default>(
    elements: usize,
    read: impl FnOnce(&mut [u8]) -> std::result::Result<(), String>,
) -> std::result::Result<Vec<T>, String> {
    const { assert!(cfg!(target_endian = "little"), "tensor files are little-endian") };
    let mut values = vec![T::default(); elements];
    // SAFETY: every `T` here is a plain number type (any bit pattern is a valid
    // value); the byte view covers exactly the vector's initialised elements.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(values.as_slice()),
        )
    };
    read(bytes)?;
    Ok(values)
}

/// Where tensor bytes come from: an open file, read at offsets, or bytes in memory.
#[derive(Clone, Copy)]
enum Source<'a> {
    File(&'a File),
    Memory(&'a [u8]),
}

impl Source<'_> {
    /// Fills `buf` from byte `offset`; a file that ends first is an error.
    fn read_at(self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::File(file) => {
                #[cfg(unix)]
                {
                    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
                }
                #[cfg(windows)]
                {
                    let mut done = 0;
                    while done < buf.len() {
                        let n = std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64)?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        done += n;
                    }
                    Ok(())
                }
            }
            Source::Memory(bytes) => {
                let start = usize::try_from(offset).ok().filter(|&s| s <= bytes.len());
                match start.and_then(|s| bytes.get(s..s + buf.len())) {
                    Some(found) => {
                        buf.copy_from_slice(found);
                        Ok(())
                    }
                    None => Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
        }
    }
}

/// The header's length from the file's 8-byte prefix, checked against the bytes
/// after the prefix and `limits` before anything that long is allocated.
fn header_len(prefix: [u8; PREFIX], file_len: u64, limits: ReadLimits) -> std::result::Result<usize, String> {
    let header_len = u64::from_le_bytes(prefix);
    let available = file_len - PREFIX as u64;
    if header_len > available {
        return Err(format!(
            "header length {header_len} is larger than the {available} bytes after the length prefix: truncated or not safetensors"
        ));
    }
    if header_len > limits.max_header_bytes {
        return Err(format!(
            "header length {header_len} is over the limit of {} bytes (max_header_bytes)",
            limits.max_header_bytes
        ));
    }
    usize::try_from(header_len).map_err(|_| format!("header length {header_len} does not fit in memory"))
}

/// Checks the framing and every header entry against the file's length and
/// `limits`, so that errors name the key and the numbers involved and nothing
/// is allocated for a claim the file cannot back.
fn index(json: &[u8], file_len: u64, limits: ReadLimits) -> std::result::Result<Index, String> {
    let data_start = PREFIX + json.len();
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err("header is not a JSON object".into());
    }
    let UniqueKeys(entries) = unique_keys(json, limits.max_tensors)?;
    let data_len = file_len - data_start as u64;
    let mut metadata = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, entry) in &entries {
        if name == "__metadata__" {
            let Some(map) = entry.as_object().filter(|m| m.values().all(Value::is_string)) else {
                return Err("`__metadata__` must map strings to strings".into());
            };
            metadata = map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            continue;
        }
        let info = check_entry(name, entry, data_len, limits).map_err(|err| format!("tensor `{name}`: {err}"))?;
        tensors.push(info);
    }
    let total: u64 = tensors.iter().map(|t| t.bytes() as u64).sum();
    if total > limits.max_total_bytes {
        return Err(format!(
            "its tensors claim {total} bytes in all, over the limit of {} bytes (max_total_bytes)",
            limits.max_total_bytes
        ));
    }
    check_coverage(&tensors, data_len)?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Index {
        data_start,
        tensors,
        metadata,
    })
}

/// A JSON object's entries in order, refusing a key given twice: serde_json keeps
/// the last, so a header could otherwise say two things about one tensor.
struct UniqueKeys(Vec<(String, Value)>);

/// The header's entries, refused as soon as they outnumber `max_tensors` (plus
/// `__metadata__`), before the rest of a huge header is held in memory.
fn unique_keys(json: &[u8], max_tensors: u64) -> std::result::Result<UniqueKeys, String> {
    use serde::de::DeserializeSeed;
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let entries = Entries { max_tensors }
        .deserialize(&mut deserializer)
        .and_then(|entries| deserializer.end().map(|()| entries));
    entries.map_err(|err| match err.to_string() {
        // The limit's own message, without serde_json's position.
        text if text.starts_with(TOO_MANY) => text.split(" at line ").next().unwrap_or(&text).to_string(),
        text => format!("header is not valid JSON: {text}"),
    })
}

const TOO_MANY: &str = "the header lists more than";

struct Entries {
    max_tensors: u64,
}

impl<'de> serde::de::DeserializeSeed<'de> for Entries {
    type Value = UniqueKeys;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> std::result::Result<UniqueKeys, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Entries {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        let mut tensors = 0u64;
        while let Some(key) = map.next_key::<String>()? {
            if key != "__metadata__" {
                tensors += 1;
                if tensors > self.max_tensors {
                    return Err(serde::de::Error::custom(format!(
                        "{TOO_MANY} {} tensors, the limit (max_tensors)",
                        self.max_tensors
                    )));
                }
            }
            if !seen.insert(key.clone()) {
                let key = crate::printable(&key).into_owned();
                return Err(serde::de::Error::custom(format!("the key `{key}` appears twice")));
            }
            let value: Value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(UniqueKeys(entries))
    }
}

/// The format stores tensors back to back: no two share a byte, and no byte of
/// the data section belongs to none.
fn check_coverage(tensors: &[TensorInfo], data_len: u64) -> std::result::Result<(), String> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| (t.begin, t.end));
    let mut covered = 0usize;
    let mut previous: Option<&TensorInfo> = None;
    for t in by_offset {
        if t.begin < covered {
            let p = previous.expect("covered > 0 means a previous tensor");
            return Err(format!(
                "tensor `{}`: data offsets [{}, {}] overlap those of `{}` [{}, {}]",
                t.name, t.begin, t.end, p.name, p.begin, p.end
            ));
        }
        if t.begin > covered {
            return Err(format!(
                "tensor `{}`: data offsets [{}, {}] leave bytes [{covered}, {}] of the data section unused",
                t.name, t.begin, t.end, t.begin
            ));
        }
        covered = t.end;
        previous = Some(t);
    }
    if covered as u64 != data_len {
        return Err(format!(
            "the data section holds {data_len} bytes but the tensors cover {covered}: trailing bytes or a corrupt header"
        ));
    }
    Ok(())
}

fn check_entry(
    name: &str,
    entry: &Value,
    data_len: u64,
    limits: ReadLimits,
) -> std::result::Result<TensorInfo, String> {
    let field = |key: &str| entry.get(key).ok_or(format!("header entry has no `{key}`"));
    let dtype_value = field("dtype")?;
    let dtype: Dtype =
        serde_json::from_value(dtype_value.clone()).map_err(|_| format!("unknown dtype {dtype_value}"))?;
    let shape_value = field("shape")?;
    let shape: Vec<u64> = serde_json::from_value(shape_value.clone())
        .map_err(|_| format!("shape {shape_value} is not a list of non-negative integers"))?;
    let offsets_value = field("data_offsets")?;
    let [begin, end]: [u64; 2] = serde_json::from_value(offsets_value.clone())
        .map_err(|_| format!("data_offsets {offsets_value} is not a pair of non-negative integers"))?;
    if begin > end || end > data_len {
        return Err(format!(
            "data offsets [{begin}, {end}] lie outside the data section of {data_len} bytes: truncated or corrupt file"
        ));
    }
    // The element count must fit too, not only the bytes: with a zero dimension
    // the bytes are 0 whatever the other dimensions claim.
    // (Strides are products of the other dimensions, so those must fit as well.)
    let nonzero = shape
        .iter()
        .filter(|&&d| d > 0)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let elements = if shape.contains(&0) { Some(0) } else { nonzero };
    let bits = nonzero
        .and(elements)
        .and_then(|elements| elements.checked_mul(dtype.bitsize() as u64))
        .ok_or(format!("shape {shape:?} overflows"))?;
    let needed = bits.div_ceil(8);
    if needed != end - begin {
        return Err(format!(
            "shape {shape:?} of {dtype:?} needs {needed} bytes but its data offsets span {}",
            end - begin
        ));
    }
    if needed > limits.max_tensor_bytes {
        return Err(format!(
            "claims {needed} bytes, over the limit of {} bytes per tensor (max_tensor_bytes)",
            limits.max_tensor_bytes
        ));
    }
    // Every number now fits in the file's length, hence in usize.
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape: shape.iter().map(|&d| d as usize).collect(),
        begin: begin as usize,
        end: end as usize,
    })
}

/// Writes tensors and metadata to `path` atomically (see [`write_atomically`]).
/// An existing file is replaced only when `overwrite` is set.
pub fn write_safetensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: HashMap<String, String>,
    overwrite: bool,
) -> Result<()> {
    let path = path.as_ref();
    let fail = |message: String| Error::file(path, message);
    // Refuse early, before serialising; `write_atomically` checks again without a race.
    if !overwrite && path.exists() {
        return Err(fail(ALREADY_EXISTS.into()));
    }
    let mut contiguous = Vec::new();
    for (name, tensor) in tensors {
        contiguous.push((name.to_string(), tensor.contiguous()?));
    }
    let bytes = safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|err| fail(format!("cannot serialise: {err}")))?;
    write_atomically(path, &bytes, overwrite)
}

const ALREADY_EXISTS: &str = "already exists (pass overwrite, or --force, to replace it)";

/// Writes `bytes` to `path` so that no reader ever sees half a file: they go to
/// a temporary file in the same directory, synced, then moved into place. With
/// `overwrite` the move is a rename over any existing file; without it, a hard
/// link, which fails if `path` exists even when another writer created it a
/// moment ago (a file system without hard links falls back to check-then-rename).
/// On any error the temporary file is removed and an existing `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let fail = |message: String| Error::file(path, message);
    if path.is_dir() {
        return Err(fail("is a directory, expected a file".into()));
    }
    // Unique per call, not only per process: two threads saving the same path
    // must not share (and truncate) one temporary file.
    static NEXT_TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = NEXT_TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = temporary_path(path, serial).ok_or_else(|| fail("is not a file path".into()))?;
    let guard = crate::interrupt::RemoveOnSignal::new(&temp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(format!("cannot write: {err}")));
    }
    let placed = if overwrite {
        std::fs::rename(&temp, path)
    } else {
        place_new(&temp, path)
    };
    let _ = std::fs::remove_file(&temp);
    drop(guard);
    placed.map_err(|err| match err.kind() {
        std::io::ErrorKind::AlreadyExists => fail(ALREADY_EXISTS.into()),
        _ => fail(format!("cannot write: {err}")),
    })
}

/// The temporary file [`write_atomically`] writes before moving it to `path`:
/// hidden, beside it, named by the process and `serial`; none for a path without a
/// file name.
pub fn temporary_path(path: &Path, serial: u64) -> Option<PathBuf> {
    let file_name = path.file_name()?.to_string_lossy();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Some(dir.join(format!(".{file_name}.{}.{serial}.tmp", std::process::id())))
}

/// Moves `temp` to `path` unless `path` exists. The caller removes `temp` afterwards.
fn place_new(temp: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(temp, path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(err),
        // No hard links here (some network and FAT file systems): the check and
        // the rename are two steps, with a race between them.
        Err(_) if !path.exists() => std::fs::rename(temp, path),
        Err(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
    }
}
