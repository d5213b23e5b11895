/*
 * Routing decisions for the submission socket: daemon.allow, the routes
 * list, XRELAY= and the relays' allow lists (SPEC sections 1 and 4.1).
 * Pure: the peer's ids come from the kernel at connect time, the config's
 * user and group names were resolved when it was loaded.
 */
#include "route.h"

#include <string.h>
#include <strings.h>

#include "config.h"

const char *route_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}

int route_peer_in_group(const struct route_peer *peer, gid_t gid)
{
    if (peer->gid == gid)
        return 1;
    for (size_t i = 0; i < peer->ngroups; i++)
        if (peer->groups[i] == gid)
            return 1;
    return 0;
}

int route_peer_allowed(const struct access_list *al, const struct route_peer *peer)
{
    if (!al->set)
        return 1;
    for (size_t i = 0; i < al->nuids; i++)
        if (al->uids[i] == peer->uid)
            return 1;
    for (size_t i = 0; i < al->ngids; i++)
        if (route_peer_in_group(peer, al->gids[i]))
            return 1;
    return 0;
}

static int sender_matches(const char *want, const char *sender)
{
    if (strcmp(want, "<>") == 0)
        return sender[0] == '\0';
    return strcasecmp(want, sender) == 0;
}

static int rule_matches(const struct route_rule *r, const struct route_peer *peer,
                        const char *sender, const char *rcpt)
{
    if (r->sender_domain && strcasecmp(r->sender_domain, route_domain(sender)) != 0)
        return 0;
    if (r->sender && !sender_matches(r->sender, sender))
        return 0;
    if (r->recipient_domain && strcasecmp(r->recipient_domain, route_domain(rcpt)) != 0)
        return 0;
    if (r->has_user && r->user != peer->uid)
        return 0;
    if (r->has_group && !route_peer_in_group(peer, r->group))
        return 0;
    return 1;
}

int route_recipient(const struct config *cfg, const struct route_peer *peer, const char *sender,
                    const char *rcpt, const struct relay_config *xrelay, size_t *relay,
                    enum route_source *source)
{
    enum route_source src = ROUTE_BY_DEFAULT;
    size_t idx = cfg->default_relay;
    size_t i;
    for (i = 0; i < cfg->nroutes; i++)
        if (rule_matches(&cfg->routes[i], peer, sender, rcpt))
            break;
    if (i < cfg->nroutes) {
        idx = cfg->routes[i].relay;
        src = ROUTE_BY_RULE;
    } else if (xrelay) {
        idx = (size_t)(xrelay - cfg->relays);
        src = ROUTE_BY_XRELAY;
    }
    *relay = idx;
    if (source)
        *source = src;
    return route_peer_allowed(&cfg->relays[idx].allow, peer) ? 0 : -1;
}

static int map_entry_matches(const char *want, const char *sender)
{
    if (strcmp(want, "<>") == 0)
        return sender[0] == '\0';
    if (want[0] == '@') /* any local part at that domain */
        return sender[0] != '\0' && strchr(sender, '@') != NULL &&
               strcasecmp(want + 1, route_domain(sender)) == 0;
    return strcasecmp(want, sender) == 0;
}

int route_sender_allowed(const struct config *cfg, uid_t uid, const char *user, const char *sender)
{
    if (!cfg->sender_policy_own || uid == 0)
        return 1;
    const char *at = strrchr(sender, '@');
    size_t local = at ? (size_t)(at - sender) : strlen(sender);
    /* Local parts are case-sensitive (RFC 5321 2.4), and so are login names. */
    if (user != NULL && sender[0] != '\0' && strlen(user) == local &&
        strncmp(sender, user, local) == 0)
        return 1;
    for (size_t i = 0; i < cfg->nsender_map; i++) {
        const struct sender_map_entry *e = &cfg->sender_map[i];
        if (e->uid != uid)
            continue;
        for (size_t k = 0; k < e->naddrs; k++)
            if (map_entry_matches(e->addrs[k], sender))
                return 1;
    }
    return 0;
}
