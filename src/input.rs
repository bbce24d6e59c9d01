//! What the `map` family accepts as input: any iterator or any stream.

use futures::stream::{self, BoxStream, Stream, StreamExt};

/// Something that can feed a pool's `map`, `imap`, `imap_unordered` or `starmap`: any
/// `IntoIterator` (a `Vec`, a range, an iterator chain) or any `Stream`.
///
/// The marker `M` only tells the two blanket implementations apart ([`FromIter`] and
/// [`FromStream`]); it is always inferred.
pub trait Input<A, M>: Send + 'static {
    /// The number of items, when it is known exactly in advance, and the items.
    #[doc(hidden)]
    fn into_parts(self) -> (Option<usize>, BoxStream<'static, A>);
}

/// Marks [`Input`] for iterators.
#[derive(Debug)]
pub enum FromIter {}

/// Marks [`Input`] for streams.
#[derive(Debug)]
pub enum FromStream {}

fn exact((low, high): (usize, Option<usize>)) -> Option<usize> {
    (Some(low) == high).then_some(low)
}

impl<I> Input<I::Item, FromIter> for I
where
    I: IntoIterator + Send + 'static,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    fn into_parts(self) -> (Option<usize>, BoxStream<'static, I::Item>) {
        let iter = self.into_iter();
        (exact(iter.size_hint()), stream::iter(iter).boxed())
    }
}

impl<S> Input<S::Item, FromStream> for S
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    fn into_parts(self) -> (Option<usize>, BoxStream<'static, S::Item>) {
        (exact(self.size_hint()), self.boxed())
    }
}
