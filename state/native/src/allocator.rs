//! The module's heap: mimalloc, instead of the C library's `malloc`.
//!
//! Every customer holds a few small records that are replaced as its events come (the
//! bookkeeping record, the windowed counts, the affinities); mimalloc keeps blocks of one size
//! together, so the memory they leave behind is used again rather than left in holes between
//! live blocks (about 10% less memory over a day of events, and a little less CPU time:
//! bench/RESULTS.md, "Memory per customer").

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
