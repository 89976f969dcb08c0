//! The guest's allocator: small blocks are reused through free lists, one
//! per size class, in front of a general allocator (talc).
//!
//! A request allocates and frees thousands of small values (strings, map
//! entries, rows), and a general allocator spent as many instructions on
//! them as the whole native interpreter spends on a request (callgrind:
//! 330 k instructions of talc per `transfer`). A freed small block goes on
//! its class's list and the next allocation of that class takes it back:
//! a few instructions each way. Blocks of a class are never returned to
//! talc, so what a class holds is its high-water mark, and the component's
//! requests are alike: the instance's memory stops growing after the first
//! few. The component has one thread (no atomics): no locking.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// Classes are multiples of this many bytes, aligned to it.
const GRAIN: usize = 16;
/// Blocks up to this size are kept; larger ones go to the inner allocator.
pub const MAX_SMALL: usize = 1024;
const CLASSES: usize = MAX_SMALL / GRAIN;

/// A free block: the next free block of its class.
struct Free {
    next: *mut Free,
}

/// Small-block free lists in front of `A`.
pub struct Classes<A> {
    inner: A,
    heads: UnsafeCell<[*mut Free; CLASSES]>,
}

// SAFETY: used only where there is one thread (the wasm32 guest, and the
// single-threaded tests); `Sync` is what `#[global_allocator]` asks for.
unsafe impl<A: Sync> Sync for Classes<A> {}

impl<A> Classes<A> {
    /// Free lists (empty) in front of `inner`.
    pub const fn new(inner: A) -> Classes<A> {
        Classes {
            inner,
            heads: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }

    /// The class of a layout, if it is small: sizes 1–16 are class 0,
    /// 17–32 class 1, and so on; a size-0 layout is class 0 too.
    fn class(layout: Layout) -> Option<usize> {
        (layout.size() <= MAX_SMALL && layout.align() <= GRAIN)
            .then(|| layout.size().saturating_sub(1) / GRAIN)
    }

    /// The layout every block of class `c` is allocated with.
    fn block(c: usize) -> Layout {
        // SAFETY: (c + 1) * GRAIN is at most MAX_SMALL, a multiple of the
        // power-of-two GRAIN: a valid size for that alignment.
        unsafe { Layout::from_size_align_unchecked((c + 1) * GRAIN, GRAIN) }
    }
}

// SAFETY: every block handed out is either the inner allocator's own or a
// block of the same class that was freed before (so at least as large as
// the layout asks for and aligned to GRAIN, which covers its alignment);
// a block is on at most one list, and only while it is free.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Classes<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = Self::class(layout) else {
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: one thread, and no reference to `heads` outlives a call.
        let heads = unsafe { &mut *self.heads.get() };
        let head = heads[c];
        if head.is_null() {
            return unsafe { self.inner.alloc(Self::block(c)) };
        }
        // SAFETY: `head` is a free block of class `c` (see above).
        heads[c] = unsafe { (*head).next };
        head.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = Self::class(layout) else {
            return unsafe { self.inner.dealloc(ptr, layout) };
        };
        let heads = unsafe { &mut *self.heads.get() };
        let free: *mut Free = ptr.cast();
        // SAFETY: the block is at least GRAIN bytes and GRAIN-aligned, and
        // its owner has given it up.
        unsafe { free.write(Free { next: heads[c] }) };
        heads[c] = free;
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's promises (a valid new size for the alignment).
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class(layout), Self::class(new)) {
            // The same block fits.
            (Some(a), Some(b)) if a == b => ptr,
            // Both large: the inner allocator may grow in place.
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            _ => {
                let to = unsafe { self.alloc(new) };
                if !to.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                to
            }
        }
    }
}
