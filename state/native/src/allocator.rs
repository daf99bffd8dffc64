//! The module's heap: mimalloc, instead of the C library's `malloc`.
//!
//! Every customer holds a few small records that are replaced as its events come (the
//! bookkeeping record, the windowed counts, the affinities); mimalloc keeps blocks of one size
//! together, so the memory they leave behind is used again rather than left in holes between
//! live blocks (about 10% less memory over a day of events: bench/RESULTS.md, "Memory per
//! customer"). Built without transparent huge pages (`no_thp`): the heap then grows by pages, not
//! by 2 MiB at a time, which cost a small engine several MiB.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
