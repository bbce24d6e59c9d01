//! This program's image: its build id, and how a function chosen in the parent is found
//! again in a child.
//!
//! A task is a `fn(A) -> R` pointer: a plain `fn` item or a closure that captures
//! nothing, coerced (a [`StarFn`](crate::StarFn) of `starmap` is a zero-sized type
//! instead). The parent sends the address of the monomorphised *trampoline*
//! (`task_fn::run_job::<A, R>`) and of the task, each as an offset from the load address
//! of the main executable. The child adds its own load address and calls the
//! trampoline, which runs the task.
//!
//! Those addresses are meaningful only when
//!
//! 1. both processes run the same executable: the handshake compares the ELF build-id
//!    (or, where the linker wrote none, a hash of the executable file), see [`build_id`];
//! 2. the trampoline and the task lie in the main executable's code, not in a library loaded at
//!    another address: [`FnRef::of`] refuses anything outside the executable's text
//!    segments in the parent, and [`FnRef::resolve`] checks again in the child.
//!
//! The first is proven by a [`SameBuild`], which only a matching build id makes, and
//! which [`FnRef::resolve`] requires; the second is checked on both sides. Every
//! `unsafe` step that depends on this is in this module.

use std::ffi::{c_int, c_void};
use std::io::Read;
use std::ops::Range;
use std::sync::OnceLock;

use crate::protocol::codec::Large;
use crate::protocol::{FnRef, Outcome};

/// The type-erased entry point of one task type: decodes a chunk of arguments from
/// `payload`, runs the task (at address `task`, for a task sent as a `fn` pointer) on
/// each, and appends the encoded results to `out` (see `crate::task_fn`).
pub(crate) type Trampoline =
    fn(task: Option<usize>, payload: &[u8], out: &mut Vec<u8>, large: &mut Large) -> Outcome;

/// A task resolved in this process: its trampoline and, for a task sent as a `fn`
/// pointer, the task's address (made only by [`FnRef::resolve`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    run: Trampoline,
    task: Option<usize>,
}

impl Resolved {
    /// Runs the chunk of encoded arguments in `payload`, appending the results to `out`.
    /// `large`: the job's byte strings in shared memory, see [`Large`].
    pub(crate) fn run(self, payload: &[u8], out: &mut Vec<u8>, large: &mut Large) -> Outcome {
        (self.run)(self.task, payload, out, large)
    }
}

/// Proof that a peer runs this same build: made only by [`SameBuild::check`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SameBuild(());

impl SameBuild {
    /// `Some` if `peer_build` (the build id a peer sent) is this build's.
    pub(crate) fn check(peer_build: &[u8]) -> Option<SameBuild> {
        (peer_build == build_id()).then_some(SameBuild(()))
    }
}

/// What is known of the main executable's image in this process.
struct Image {
    /// Load bias: run-time address minus link-time address.
    bias: usize,
    /// Executable segments, as run-time addresses.
    text: Vec<Range<usize>>,
    /// The GNU build-id note, when the linker wrote one.
    build_id: Option<Vec<u8>>,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(read_image)
}

fn read_image() -> Image {
    let mut found: Option<Image> = None;
    // SAFETY: `dl_iterate_phdr` calls `visit_main_program` with pointers that are valid
    // for the duration of each call; `data` is the `&mut Option<Image>` above, which
    // outlives the call and is not touched elsewhere meanwhile.
    unsafe {
        libc::dl_iterate_phdr(
            Some(visit_main_program),
            (&mut found as *mut Option<Image>).cast::<c_void>(),
        );
    }
    found.unwrap_or(Image {
        bias: 0,
        text: Vec::new(),
        build_id: None,
    })
}

/// Called by `dl_iterate_phdr`; the first object it reports is the main program
/// (dl_iterate_phdr(3)), so it records that one and stops.
unsafe extern "C" fn visit_main_program(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: see `read_image`: `info` is valid during this call and `data` is our
    // `Option<Image>`.
    let (info, out) = unsafe { (&*info, &mut *data.cast::<Option<Image>>()) };
    let bias = info.dlpi_addr as usize;
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: the loader guarantees `dlpi_phnum` program headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let mut text = Vec::new();
    let mut build_id = None;
    for ph in phdrs {
        let start = bias.wrapping_add(ph.p_vaddr as usize);
        let len = ph.p_memsz as usize;
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            text.push(start..start + len);
        } else if ph.p_type == libc::PT_NOTE && build_id.is_none() {
            // SAFETY: a PT_NOTE segment is mapped readable at `start` for `p_memsz`
            // bytes for as long as the program runs.
            let notes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
            build_id = find_build_id(notes);
        }
    }
    *out = Some(Image {
        bias,
        text,
        build_id,
    });
    1
}

/// Finds the `NT_GNU_BUILD_ID` descriptor in a block of ELF notes.
fn find_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().unwrap_or_default());
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// An identifier of the running executable: two processes with the same `build_id` run
/// the same code at the same offsets.
///
/// The ELF build-id when present; otherwise a hash of the executable's bytes (slower, so
/// computed once per process).
pub(crate) fn build_id() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| {
        if let Some(id) = &image().build_id {
            return id.clone();
        }
        let mut hasher = std::hash::DefaultHasher::new();
        let mut len = 0u64;
        if let Ok(mut file) = std::fs::File::open("/proc/self/exe") {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                len += n as u64;
                std::hash::Hash::hash_slice(&buf[..n], &mut hasher);
            }
        }
        let digest = std::hash::Hasher::finish(&hasher);
        [
            b"exehash:".as_slice(),
            &len.to_le_bytes(),
            &digest.to_le_bytes(),
        ]
        .concat()
    })
}

impl FnRef {
    /// The reference to the trampoline `run` and the task at address `task` (for a
    /// task sent as a `fn` pointer), or why they cannot be sent to another process.
    pub(crate) fn of(run: Trampoline, task: Option<usize>) -> Result<FnRef, String> {
        let image = image();
        let offset = |addr: usize| {
            if image.text.iter().any(|r| r.contains(&addr)) {
                Ok((addr - image.bias) as u64)
            } else {
                Err(format!(
                    "task function at {addr:#x} is not in the main executable's code (is it \
                     in a dynamic library?); a worker cannot find it"
                ))
            }
        };
        let task = match task {
            Some(addr) => offset(addr)?.saturating_add(1),
            None => 0,
        };
        Ok(FnRef::from_bits(offset(run as usize)?, task))
    }

    /// The trampoline and task this reference names in this process, sent by a peer
    /// that runs the same build (`_same`).
    pub(crate) fn resolve(self, _same: SameBuild) -> Result<Resolved, String> {
        let image = image();
        let (run, task) = self.to_bits();
        let address = |bits: u64| {
            usize::try_from(bits)
                .ok()
                .and_then(|off| off.checked_add(image.bias))
                .filter(|addr| image.text.iter().any(|r| r.contains(addr)))
                .ok_or_else(|| {
                    format!("task reference {bits:#x} does not point into this executable's code")
                })
        };
        let addr = address(run)?;
        let task = match task {
            0 => None,
            plus_one => Some(address(plus_one - 1)?),
        };
        // SAFETY: the sender runs this same executable (same build-id: `_same` proves
        // it), and the sender produced the offset in `FnRef::of` from a
        // `Trampoline` lying in the executable's text. The same executable maps the same
        // code at the same offset from its load bias, so `addr` is the address of that
        // same `Trampoline` function here, and transmuting it back to the fn pointer type
        // it was taken from is sound.
        let run = unsafe { std::mem::transmute::<usize, Trampoline>(addr) };
        Ok(Resolved { run, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_addresses_outside_the_executable() {
        let same = SameBuild::check(build_id()).expect("this build");
        assert!(FnRef::from_bits(u64::MAX, 0).resolve(same).is_err());
        assert!(FnRef::from_bits(0, 0).resolve(same).is_err());
    }

    #[test]
    fn another_build_is_refused() {
        let mut other = build_id().to_vec();
        other[0] ^= 1;
        assert!(SameBuild::check(&other).is_none());
        assert!(SameBuild::check(&[]).is_none());
    }

    #[test]
    fn has_a_build_id() {
        assert!(!build_id().is_empty());
    }

    #[test]
    fn parses_a_build_id_note() {
        let mut notes = Vec::new();
        for (name, kind, desc) in [
            (&b"XYZ\0"[..], 1u32, &[9u8, 9][..]),
            (&b"GNU\0"[..], 3u32, &[1u8, 2, 3, 4, 5][..]),
        ] {
            notes.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&kind.to_ne_bytes());
            notes.extend_from_slice(name);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        assert_eq!(find_build_id(&notes), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(find_build_id(&notes[..20]), None);
    }
}
