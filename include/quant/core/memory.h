// Large buffers and the cost of their first touch.
#pragma once

#include <cstddef>

namespace quant {

// Asks the kernel to back a large buffer that has not been touched yet with transparent huge
// pages (Linux madvise(MADV_HUGEPAGE), for systems whose THP mode is "madvise"). Fresh 4 KiB pages
// cost a fault each on first touch, ~10 µs apiece on the virtual machines this runs on (0.75 s for
// a 5632² double matrix; docs/performance.md). Only the 2 MiB-aligned interior is advised; a hint,
// with no effect on buffers under 4 MiB or on other systems.
void advise_huge_pages(const void* data, std::size_t bytes);

template <typename M>
void advise_huge_pages(const M& m) {
  advise_huge_pages(m.data(), sizeof(typename M::Scalar) * static_cast<std::size_t>(m.size()));
}

}  // namespace quant
