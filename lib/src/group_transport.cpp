#include "frugal/group_transport.hpp"

#include <algorithm>
#include <string>

#include "frugal/error.hpp"

namespace frugal {

GroupTransport::GroupTransport(Transport& parent, std::vector<int> members)
    : parent_(parent), members_(std::move(members)) {
  require(!members_.empty(), "members", "must name at least this rank");
  std::vector<int> sorted = members_;
  std::sort(sorted.begin(), sorted.end());
  require(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), "members",
          "must be distinct");
  require(sorted.front() >= 0 && sorted.back() < parent.size(), "members",
          "must be ranks of the parent transport");
  const auto self = std::find(members_.begin(), members_.end(), parent.rank());
  require(self != members_.end(), "members", "must include the parent transport's own rank");
  rank_ = static_cast<int>(self - members_.begin());
  offset_ = parent.max_tag() / 2 + 1;
  max_tag_ = parent.max_tag() - offset_;
  name_ = std::string(parent.name()) + " group";
}

Tag GroupTransport::parent_tag(int peer, Tag tag, std::string_view what) const {
  check_peer(peer, what);
  if (tag > max_tag_) {
    throw Error(ErrorCode::InvalidArgument, std::string(what) + ": tag " + std::to_string(tag) +
                                                " exceeds the group's max_tag " +
                                                std::to_string(max_tag_));
  }
  return offset_ + tag;
}

Request GroupTransport::isend(int peer, Tag tag, std::span<const std::byte> data) {
  const Tag t = parent_tag(peer, tag, "isend");
  return parent_.isend(members_[static_cast<std::size_t>(peer)], t, data);
}

Request GroupTransport::irecv(int peer, Tag tag, std::span<std::byte> data) {
  const Tag t = parent_tag(peer, tag, "irecv");
  return parent_.irecv(members_[static_cast<std::size_t>(peer)], t, data);
}

bool GroupTransport::test(Request& request) {
  return parent_.test(request);
}

void GroupTransport::wait_all(std::span<Request* const> requests, Deadline deadline) {
  // The parent's wait also watches for its peers' failure notices.
  parent_.wait_all(requests, deadline);
}

void GroupTransport::cancel(PendingOp& op) noexcept {
  // Requests are the parent's (op.owner), so this is reached only if a caller calls it directly.
  parent_.cancel(op);
}

void GroupTransport::notify_failure(const Error& error) noexcept {
  // Every parent rank is told, not only the group: a rank of another group waiting on this one
  // in the next step of a hierarchical collective fails at once too.
  parent_.notify_failure(error);
}

std::unique_ptr<Communicator> make_group_communicator(Communicator& parent,
                                                      std::vector<int> members) {
  CommunicatorOptions options;
  options.timeout = parent.timeout();
  return std::make_unique<Communicator>(
      std::make_unique<GroupTransport>(parent.transport(), std::move(members)), options);
}

}  // namespace frugal
