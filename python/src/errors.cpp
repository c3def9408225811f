// frugal::Error -> the exception classes of frugal.errors, chosen by the error's code.

#include <string>

#include "bindings.hpp"
#include "frugal/error.hpp"

namespace frugal::python {
namespace {

const char* class_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument:
      return "InvalidArgumentError";
    case ErrorCode::Mismatch:
      return "MismatchError";
    case ErrorCode::Timeout:
      return "TimeoutError";
    case ErrorCode::PeerFailure:
      return "PeerFailureError";
    case ErrorCode::Transport:
      return "TransportError";
    case ErrorCode::Internal:
      return "InternalError";
  }
  return "Error";
}

// A rank that rejected its own arguments enters a barrier so that its peers are not left
// waiting (see frugal/collectives.py); they see that as Mismatch, which this points out.
constexpr const char* kMismatchHint =
    " (if another rank rejected its arguments, its error says which: look there first)";

}  // namespace

void bind_errors(py::module_& m) {
  m.def("_raise_error", [](const std::string& code, const std::string& message) {
    // For the tests: raise the translation of a C++ error of a given code.
    for (const ErrorCode c : enum_values<ErrorCode>()) {
      if (to_string(c) == code) throw Error(c, message);
    }
    throw Error(ErrorCode::InvalidArgument, "code: unknown error code '" + code + "'");
  });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      std::string message = e.what();
      if (e.code() == ErrorCode::Mismatch) message += kMismatchHint;
      const py::object cls = py::module_::import("frugal.errors").attr(class_name(e.code()));
      PyErr_SetString(cls.ptr(), message.c_str());
    }
  });
}

}  // namespace frugal::python
