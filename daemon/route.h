/*
 * Routing of local submissions: who may submit (daemon.allow), which relay
 * each recipient goes to (the ordered routes list, XRELAY=, default_relay),
 * and whether the submitter may use that relay (the relay's allow list).
 * Pure functions over the config and the peer's ids.
 */
#ifndef MAILPOOL_ROUTE_H
#define MAILPOOL_ROUTE_H

#include <stddef.h>
#include <sys/types.h>

struct config;
struct access_list;
struct relay_config;

/*
 * The submitting process as the kernel reported it when it connected:
 * SO_PEERCRED for uid and primary gid, SO_PEERGROUPS for the supplementary
 * groups.  Names in the config were turned into ids at load time, so no
 * decision here ever asks NSS (which may block on LDAP or the network).
 */
struct route_peer {
    uid_t uid;
    gid_t gid;
    const gid_t *groups; /* supplementary groups; may be NULL */
    size_t ngroups;
};

/* 1 when the peer is in al (by uid, primary gid or a supplementary gid) or al was not set. */
int route_peer_allowed(const struct access_list *al, const struct route_peer *peer);

/* 1 when the peer is in the peer's group `gid` (primary or supplementary). */
int route_peer_in_group(const struct route_peer *peer, gid_t gid);

/* How a recipient's relay was chosen, for logs. */
enum route_source { ROUTE_BY_RULE, ROUTE_BY_XRELAY, ROUTE_BY_DEFAULT };

/*
 * The relay for one recipient, as an index into cfg->relays.  Precedence:
 * the first route whose every condition matches; else the relay the client
 * named with XRELAY= (xrelay, NULL if none); else default_relay.  Routes are
 * the operator's policy and come first: XRELAY= chooses among what the
 * routes leave open, in place of the default.  `sender` is the envelope
 * sender ("" for <>), `rcpt` the recipient as given.
 * Returns 0 with *relay (and *source, if not NULL) set, or -1 when the
 * peer is not in that relay's allow list (*relay is still set, for the
 * message).
 */
int route_recipient(const struct config *cfg, const struct route_peer *peer, const char *sender,
                    const char *rcpt, const struct relay_config *xrelay, size_t *relay,
                    enum route_source *source);

/*
 * daemon.sender_policy at MAIL FROM.  Under "any" every sender passes.
 * Under "own" root (uid 0) may use any sender; anyone else only an address
 * whose local part is `user` (its login name, compared exactly; any domain)
 * or one daemon.sender_map lists for its uid.  `sender` is "" for <>.
 * `user` may be NULL when the uid has no name: then only the map applies.
 * Returns 1 when allowed, 0 when not.
 */
int route_sender_allowed(const struct config *cfg, uid_t uid, const char *user, const char *sender);

/* The domain part of an address (after its last '@'), or "" when there is none. */
const char *route_domain(const char *addr);

#endif
