#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "frugal/communicator.hpp"
#include "frugal/transport.hpp"

namespace frugal {

// A Transport over a subset of another transport's ranks, so that every collective of frugal
// runs unchanged on a group of ranks (the ranks of one host, the ranks with one local index
// across hosts). Group rank i is parent rank members[i]; messages travel on the parent
// transport, which stays the owner of every request (error messages name parent ranks and
// parent tags, waits and peer-failure notices are the parent's own).
//
// Tag space: group tags are carried in the upper half of the parent's range (parent tag =
// max_tag / 2 + 1 + group tag), while a communicator on the parent starts its tags at 0. The two
// could only meet after max_tag / 2 collectives on the parent (2^30 on loopback, 2^31 on UCX,
// MPI_TAG_UB / 2 on MPI, at least 16383). Groups whose pairs of ranks are disjoint (one host's
// ranks, and the ranks with one local index on different hosts) share that half safely, since
// a message is matched by sender and tag. Groups that share a pair of ranks must not have
// collectives in flight at the same time.
//
// The parent transport must outlive the group, and only one thread may drive either at a time
// (the parent's rule).
class GroupTransport final : public Transport {
 public:
  // `members`: parent ranks in group-rank order, distinct, within the parent, including the
  // parent's own rank. Throws InvalidArgument naming `members` otherwise.
  GroupTransport(Transport& parent, std::vector<int> members);

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return static_cast<int>(members_.size()); }
  std::string_view name() const noexcept override { return name_; }
  Tag max_tag() const noexcept override { return max_tag_; }

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override;
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override;
  bool test(Request& request) override;
  void wait_all(std::span<Request* const> requests, Deadline deadline) override;
  void cancel(PendingOp& op) noexcept override;
  void notify_failure(const Error& error) noexcept override;

  // The parent rank of group rank `group_rank`.
  int parent_rank(int group_rank) const {
    return members_.at(static_cast<std::size_t>(group_rank));
  }
  std::span<const int> members() const noexcept { return members_; }

 private:
  Tag parent_tag(int peer, Tag tag, std::string_view what) const;

  Transport& parent_;
  std::vector<int> members_;
  int rank_ = -1;
  Tag offset_;
  Tag max_tag_;
  std::string name_;
};

// A communicator over `members` (parent ranks, in group-rank order) of `parent`, with the
// parent's timeout. Must not outlive `parent`.
std::unique_ptr<Communicator> make_group_communicator(Communicator& parent,
                                                      std::vector<int> members);

}  // namespace frugal
