#include "quant/formats/packed.h"

#include "quant/error.h"

namespace quant::formats {

Mat load_packed_linear(const Model& model, const LinearDesc& linear) {
  fail("{}: linear '{}' is stored packed, but this build reads no packed formats yet",
       model.dir().string(), linear.prefix);
}

}  // namespace quant::formats
