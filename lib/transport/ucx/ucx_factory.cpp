// The public entry points of frugal/ucx.hpp.

#include "frugal/error.hpp"
#include "frugal/tcp_store.hpp"
#include "frugal/ucx.hpp"
#include "ucx_transport.hpp"

namespace frugal {

std::unique_ptr<Transport> make_ucx_transport(Bootstrap& bootstrap, const UcxOptions& options) {
  return std::make_unique<transport::ucx::UcxTransport>(bootstrap, options);
}

std::unique_ptr<Communicator> make_ucx_communicator_from_env(CommunicatorOptions options,
                                                             UcxOptions ucx_options) {
  std::unique_ptr<Transport> transport;
  {
    // Closed before returning: rank 0 waits here until every rank has its addresses.
    const std::unique_ptr<Bootstrap> bootstrap =
        make_tcp_bootstrap(tcp_bootstrap_options_from_env());
    transport = make_ucx_transport(*bootstrap, ucx_options);
  }
  return std::make_unique<Communicator>(std::move(transport), options);
}

std::string ucx_endpoint_info(Transport& transport, int peer) {
  auto* ucx = dynamic_cast<transport::ucx::UcxTransport*>(&transport);
  if (ucx == nullptr) {
    throw Error(ErrorCode::InvalidArgument,
                "ucx_endpoint_info: transport is '" + std::string(transport.name()) + "', not ucx");
  }
  return ucx->endpoint_info(peer);
}

}  // namespace frugal
