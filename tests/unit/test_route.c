/*
 * Routing tests: each route condition, first match wins, XRELAY= against
 * routes and the default, allow lists by uid, primary and supplementary gid.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "route.h"

static struct relay_config relays[3] = {{.name = "main"}, {.name = "lab"}, {.name = "bulk"}};
static struct route_rule rules[4];
static struct config cfg = {.relays = relays, .nrelays = 3, .default_relay = 0};

static size_t relay_for(const struct route_peer *p, const char *sender, const char *rcpt,
                        const struct relay_config *x, enum route_source *src)
{
    size_t idx = 99;
    CHECK(route_recipient(&cfg, p, sender, rcpt, x, &idx, src) == 0);
    return idx;
}

static void test_rules(void)
{
    memset(rules, 0, sizeof(rules));
    rules[0] = (struct route_rule){.sender_domain = "lab.example.org", .relay = 1};
    rules[1] =
        (struct route_rule){.recipient_domain = "bulk.test", .has_user = 1, .user = 33, .relay = 2};
    rules[2] = (struct route_rule){.sender = "<>", .relay = 1};
    rules[3] = (struct route_rule){.has_group = 1, .group = 500, .relay = 2};
    cfg.routes = rules;
    cfg.nroutes = 4;
    struct route_peer root = {.uid = 0, .gid = 0};
    struct route_peer www = {.uid = 33, .gid = 33};
    gid_t extra[] = {100, 500};
    struct route_peer member = {.uid = 1000, .gid = 1000, .groups = extra, .ngroups = 2};
    enum route_source src;

    check_case = "sender_domain, case-insensitive";
    CHECK(relay_for(&root, "a@LAB.example.org", "x@y.test", NULL, &src) == 1);
    CHECK(src == ROUTE_BY_RULE);
    CHECK(relay_for(&root, "a@sub.lab.example.org", "x@y.test", NULL, &src) == 0);
    CHECK(src == ROUTE_BY_DEFAULT);
    check_case = "all conditions must match";
    CHECK(relay_for(&www, "a@b.test", "x@bulk.test", NULL, NULL) == 2);
    CHECK(relay_for(&root, "a@b.test", "x@bulk.test", NULL, NULL) == 0);
    check_case = "null sender";
    CHECK(relay_for(&root, "", "x@y.test", NULL, NULL) == 1);
    check_case = "supplementary group";
    CHECK(relay_for(&member, "a@b.test", "x@y.test", NULL, NULL) == 2);
    check_case = "first match wins";
    CHECK(relay_for(&member, "a@lab.example.org", "x@y.test", NULL, NULL) == 1);
    check_case = "xrelay replaces the default, not a route";
    CHECK(relay_for(&root, "a@b.test", "x@y.test", &relays[2], &src) == 2);
    CHECK(src == ROUTE_BY_XRELAY);
    CHECK(relay_for(&root, "a@lab.example.org", "x@y.test", &relays[2], &src) == 1);
    CHECK(src == ROUTE_BY_RULE);
    cfg.routes = NULL;
    cfg.nroutes = 0;
}

static void test_allow(void)
{
    uid_t uids[] = {0, 33};
    gid_t gids[] = {8};
    struct access_list al = {.set = 1, .uids = uids, .nuids = 2, .gids = gids, .ngids = 1};
    struct access_list none = {.set = 1};
    struct access_list unset = {0};
    gid_t mail[] = {8};
    struct route_peer root = {.uid = 0, .gid = 0};
    struct route_peer nobody = {.uid = 65534, .gid = 65534};
    struct route_peer in_mail = {.uid = 1000, .gid = 1000, .groups = mail, .ngroups = 1};
    struct route_peer primary_mail = {.uid = 1001, .gid = 8};
    check_case = "allow";
    CHECK(route_peer_allowed(&al, &root));
    CHECK(!route_peer_allowed(&al, &nobody));
    CHECK(route_peer_allowed(&al, &in_mail));
    CHECK(route_peer_allowed(&al, &primary_mail));
    CHECK(!route_peer_allowed(&none, &root));
    CHECK(route_peer_allowed(&unset, &nobody));

    check_case = "relay allow decides";
    relays[2].allow = al;
    size_t idx = 99;
    CHECK(route_recipient(&cfg, &nobody, "a@b", "c@d", &relays[2], &idx, NULL) == -1);
    CHECK(idx == 2);
    CHECK(route_recipient(&cfg, &root, "a@b", "c@d", &relays[2], &idx, NULL) == 0);
    CHECK(route_recipient(&cfg, &nobody, "a@b", "c@d", NULL, &idx, NULL) == 0 && idx == 0);
    relays[2].allow = unset;
    check_case = "domain";
    CHECK_STR(route_domain("a@b@c.test"), "c.test");
    CHECK_STR(route_domain("bare"), "");
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"rules", test_rules},
        {"allow", test_allow},
    };
    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
