//! Heap room for the rarely running steps of a connection task (handshake, packet
//! handling, close), recycled per shard thread.
//!
//! A step is boxed so that its state does not enlarge the task of every idle connection.
//! With a fresh allocation per step, glibc malloc carves the long-lived allocations of the
//! next connections (task, outbox) out of the freed step, and the next step then extends
//! the heap. Each connection then costs about one step's size rather than the sum of what
//! it keeps. Steps therefore run in blocks of one size that go back to a per-thread free
//! list, so the heap keeps them apart from the long-lived allocations.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Size of a block; a larger step gets an allocation of its own.
pub(super) const BLOCK_BYTES: usize = 2048;
/// Alignment of a block; a step that needs more gets an allocation of its own.
pub(super) const BLOCK_ALIGN: usize = 128;
/// Maximum free blocks kept per thread (1 MiB), twice the bench's 256 handshakes in flight.
const MAX_FREE: usize = 512;

/// Free blocks of one thread, returned to the allocator when the thread ends.
struct FreeBlocks(Vec<NonNull<u8>>);

impl Drop for FreeBlocks {
    fn drop(&mut self) {
        for block in self.0.drain(..) {
            // SAFETY: every free block was allocated with `block_layout()` and is unused.
            unsafe { dealloc(block.as_ptr(), block_layout()) };
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeBlocks> = const { RefCell::new(FreeBlocks(Vec::new())) };
}

fn block_layout() -> Layout {
    // BLOCK_BYTES and BLOCK_ALIGN are a valid size and a power of two.
    Layout::from_size_align(BLOCK_BYTES, BLOCK_ALIGN).expect("block layout is valid")
}

/// A pinned step in a recycled block, or in an allocation of its own when it does not fit.
pub(crate) struct Step<F> {
    ptr: NonNull<F>,
    pooled: bool,
}

impl<F: Future> Step<F> {
    pub(crate) fn new(future: F) -> Self {
        let layout = Layout::new::<F>();
        let pooled = layout.size() <= BLOCK_BYTES && layout.align() <= BLOCK_ALIGN;
        let ptr = if pooled {
            FREE.with(|free| free.borrow_mut().0.pop())
                .unwrap_or_else(|| allocate(block_layout()))
                .cast::<F>()
        } else {
            return Self {
                ptr: NonNull::from(Box::leak(Box::new(future))),
                pooled: false,
            };
        };
        // SAFETY: `ptr` is a block of BLOCK_BYTES bytes aligned to BLOCK_ALIGN, which holds
        // an F (checked above), and no one else owns it.
        unsafe { ptr.as_ptr().write(future) };
        Self { ptr, pooled }
    }
}

fn allocate(layout: Layout) -> NonNull<u8> {
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc(layout) };
    NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout))
}

impl<F: Future> Future for Step<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the step lives at `ptr` until `Step` drops it and never moves; `Step`
        // owns it exclusively.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Step<F> {
    fn drop(&mut self) {
        if !self.pooled {
            // SAFETY: `ptr` came from `Box::leak` in `Step::new` and is dropped only here.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
            return;
        }
        // SAFETY: `ptr` contains an F written in `Step::new`, dropped only here.
        unsafe { self.ptr.as_ptr().drop_in_place() };
        let block = self.ptr.cast::<u8>();
        let kept = FREE
            .try_with(|free| {
                let mut free = free.borrow_mut();
                if free.0.len() < MAX_FREE {
                    free.0.push(block);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: the block was allocated with `block_layout()` and is no longer used.
            unsafe { dealloc(block.as_ptr(), block_layout()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_and_steps_dropped() {
        use std::rc::Rc;
        let token = Rc::new(());
        let held = token.clone();
        let first = Step::new(async move {
            let _held = held;
        });
        let address = first.ptr.cast::<u8>();
        drop(first);
        assert_eq!(Rc::strong_count(&token), 1, "the step's state was dropped");
        let second = Step::new(async { 7 });
        assert_eq!(second.ptr.cast::<u8>(), address, "the block was reused");
        let large = Step::new(async {
            let buf = [0u8; 4096];
            std::future::ready(()).await;
            buf.len()
        });
        assert!(!large.pooled);
    }
}
