// The training defaults that live in the library, so that frugal.torch.DistributedOptimizer
// and frugal-train decide them by one rule (compression::momentum_correction_by_default).

#include <optional>
#include <string>

#include "bindings.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/enum_names.hpp"
#include "frugal/error.hpp"

namespace frugal::python {

void bind_momentum(py::module_& m) {
  using compression::Method;
  m.def(
      "momentum_correction_by_default",
      [](const std::string& method) {
        const std::optional<Method> parsed = parse_enum<Method>(method);
        if (!parsed) {
          throw Error(ErrorCode::InvalidArgument,
                      "method: '" + method + "' is not one of " + enum_choices<Method>());
        }
        return compression::momentum_correction_by_default(*parsed);
      },
      py::arg("method"),
      "Whether DGC's momentum correction is the default for a compression method (the library's "
      "rule, shared with frugal-train).");
}

}  // namespace frugal::python
