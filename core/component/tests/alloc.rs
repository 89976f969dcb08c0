//! The guest's allocator, natively, in front of the system allocator.

#[path = "../src/alloc.rs"]
#[allow(dead_code)]
mod alloc;

use alloc::{Classes, MAX_SMALL};
use std::alloc::{GlobalAlloc, Layout, System};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

#[test]
fn a_freed_small_block_is_reused_by_its_class_only() {
    let a = Classes::new(System);
    unsafe {
        let p = a.alloc(layout(24, 8));
        a.dealloc(p, layout(24, 8));
        // Another size of the same class (17–32) gets it back.
        assert_eq!(a.alloc(layout(32, 16)), p);
        // Another class does not.
        let q = a.alloc(layout(24, 8));
        assert_ne!(q, p);
        let r = a.alloc(layout(40, 8));
        assert!(r != p && r != q);
        assert!((p as usize).is_multiple_of(16));
    }
}

#[test]
fn large_and_overaligned_blocks_go_to_the_inner_allocator() {
    let a = Classes::new(System);
    unsafe {
        for l in [layout(MAX_SMALL + 1, 8), layout(64, 64), layout(1 << 20, 8)] {
            let p = a.alloc(l);
            assert!(!p.is_null() && (p as usize).is_multiple_of(l.align()));
            p.write_bytes(7, l.size());
            a.dealloc(p, l);
        }
    }
}

#[test]
fn realloc_keeps_the_contents_across_classes_and_sizes() {
    let a = Classes::new(System);
    unsafe {
        let mut l = layout(5, 1);
        let mut p = a.alloc(l);
        for i in 0..5 {
            p.add(i).write(i as u8);
        }
        // Within the class (same block), to larger classes, to a large
        // block, and back down.
        for size in [9, 16, 17, 300, 1024, 4000, 70_000, 900, 12, 3] {
            let q = a.realloc(p, l, size);
            assert!(!q.is_null());
            if size <= 16 && l.size() <= 16 {
                assert_eq!(q, p, "the same class keeps its block");
            }
            for i in 0..l.size().min(size).min(5) {
                assert_eq!(q.add(i).read(), i as u8, "byte {i} after {size}");
            }
            p = q;
            l = layout(size, 1);
        }
        a.dealloc(p, l);
    }
}

/// Many live blocks of mixed sizes, freed and reallocated in a scrambled
/// order: no two live blocks overlap (each keeps the pattern written in it).
#[test]
fn live_blocks_never_overlap() {
    let a = Classes::new(System);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
    unsafe {
        for round in 0..20_000u32 {
            let r = next();
            if live.len() > 50 && r % 3 == 0 {
                let i = (r as usize / 3) % live.len();
                let (p, l, tag) = live.swap_remove(i);
                for k in 0..l.size() {
                    assert_eq!(p.add(k).read(), tag, "a block was overwritten");
                }
                a.dealloc(p, l);
            } else {
                let size = 1 + (r as usize >> 8) % (MAX_SMALL + 200);
                let align = [1, 2, 4, 8, 16][(r as usize >> 4) % 5];
                let l = layout(size, align);
                let p = a.alloc(l);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                let tag = round as u8;
                p.write_bytes(tag, size);
                live.push((p, l, tag));
            }
        }
        for (p, l, tag) in live {
            for k in 0..l.size() {
                assert_eq!(p.add(k).read(), tag);
            }
            a.dealloc(p, l);
        }
    }
}
