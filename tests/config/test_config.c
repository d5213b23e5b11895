/*
 * Configuration loader tests: each row writes a config text to a temporary
 * file and expects either a load with specific effective values, or an error
 * naming FILE:LINE and a phrase.  Usage: test_config GROUP [SOURCE_DIR].
 */
#include "check.h"
#include "config.h"
#include "config_check.h"
#include "log.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

/* Secrets used below; no error message or summary may ever contain them. */
#define FILE_SECRET "s3cret-from-file"
#define INLINE_SECRET "hunter2-inline"

static char tmpdir[PATH_MAX];
static char conf_path[PATH_MAX + 32];
static const char *source_dir = ".";

struct tcase {
    const char *name;
    const char *text;    /* "@DIR@" becomes the temporary directory */
    const char *err;     /* NULL: must load; else a phrase the error must contain */
    int line;            /* with err: the line the error must name, 0 for none */
    const char *errfile; /* with err: file named in the error, under @DIR@; NULL: the config */
    int check_opts;      /* compare the first relay's effective options with opts */
    unsigned opts;
    uint16_t ports[4]; /* nonzero: effective ports of the first relay's hosts */
    void (*check)(const struct config *cfg);
};

#define OPTS(x) .check_opts = 1, .opts = (x)
#define ERR(phrase, ln) .err = (phrase), .line = (ln)
#define EXT RELAY_OPT_EXTENDED
#define SEC RELAY_OPT_SECURE
#define IMPL RELAY_OPT_SECURE_IMPLICIT
#define TRUST RELAY_OPT_TRUSTED_SITE
#define FALLBACK RELAY_OPT_SECURE_FALLBACK
#define V6 RELAY_OPT_PREFER_IPV6
#define TUN RELAY_OPT_TUNNEL

/* ---- fixture ------------------------------------------------------------ */

static char *substitute(const char *text, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    for (const char *p = strstr(text, from); p; p = strstr(p + fl, from))
        n++;
    char *out = malloc(strlen(text) + n * tl + 1);
    if (!out)
        abort();
    char *o = out;
    const char *p;
    while ((p = strstr(text, from))) {
        memcpy(o, text, (size_t)(p - text));
        o += p - text;
        memcpy(o, to, tl);
        o += tl;
        text = p + fl;
    }
    memcpy(o, text, strlen(text) + 1);
    return out;
}

static void write_file(const char *name, const char *content, mode_t mode)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content) ||
        fchmod(fd, mode) < 0 || close(fd) < 0) {
        perror(path);
        exit(2);
    }
}

static void write_config(const char *text)
{
    char *t = substitute(text, "@DIR@", tmpdir);
    write_file("test.conf", t, 0644);
    free(t);
}

static void setup(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/mailpool-config-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(2);
    }
    snprintf(conf_path, sizeof(conf_path), "%s/test.conf", tmpdir);
    write_file("pw600", FILE_SECRET "\nsecond line is ignored\n", 0600);
    write_file("pw400", FILE_SECRET, 0400);
    write_file("pw644", FILE_SECRET "\n", 0644);
    write_file("pw640", FILE_SECRET "\n", 0640);
    write_file("pw604", FILE_SECRET "\n", 0604);
    write_file("pwempty", "", 0600);
    write_file("pwnewline", "\nlater\n", 0600);
    write_file("pwcrlf", FILE_SECRET "\r\n", 0600);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/pwdir", tmpdir);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/cadir", tmpdir);
    mkdir(path, 0755);
    write_file("ca.pem", "not really a certificate\n", 0644);
}

static void teardown(void)
{
    static const char *const files[] = {
        "test.conf", "pw600",  "pw400",  "pw644",    "pw640",        "pw604",   "pwempty",
        "pwnewline", "pwcrlf", "ca.pem", "inc.conf", "example.conf", "out.txt", "err.txt"};
    char path[PATH_MAX + 64];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, files[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/pwdir", tmpdir);
    rmdir(path);
    snprintf(path, sizeof(path), "%s/cadir", tmpdir);
    rmdir(path);
    rmdir(tmpdir);
}

/* Errors must name the file and line, and never a secret. */
static void check_error(const struct tcase *c, const char *err)
{
    char want[PATH_MAX + 128];
    char file[PATH_MAX + 64];
    if (c->errfile)
        snprintf(file, sizeof(file), "%s/%s", tmpdir, c->errfile);
    else
        snprintf(file, sizeof(file), "%s", conf_path);
    if (c->line > 0)
        snprintf(want, sizeof(want), "%s:%d: ", file, c->line);
    else
        snprintf(want, sizeof(want), "%s: ", file);
    if (strncmp(err, want, strlen(want)) != 0) {
        fprintf(stderr, "[%s] error \"%s\" does not start with \"%s\"\n", c->name, err, want);
        check_failures++;
    }
    if (!strstr(err, c->err)) {
        fprintf(stderr, "[%s] error \"%s\" does not contain \"%s\"\n", c->name, err, c->err);
        check_failures++;
    }
    CHECK(!strstr(err, FILE_SECRET));
    CHECK(!strstr(err, INLINE_SECRET));
}

static void run_cases(const struct tcase *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct tcase *c = &cases[i];
        char err[1024] = "";
        check_case = c->name;
        write_config(c->text);
        struct config *cfg = config_load(conf_path, err, sizeof(err));
        if (getenv("CONFIG_TEST_VERBOSE")) /* to read the messages an operator would get */
            fprintf(stderr, "[%s] %s\n", c->name, cfg ? "loaded" : err);
        if (c->err) {
            if (cfg) {
                fprintf(stderr, "[%s] loaded, but expected an error containing \"%s\"\n", c->name,
                        c->err);
                check_failures++;
                config_free(cfg);
                continue;
            }
            check_error(c, err);
            continue;
        }
        if (!cfg) {
            fprintf(stderr, "[%s] expected to load, got: %s\n", c->name, err);
            check_failures++;
            continue;
        }
        const struct relay_config *r = &cfg->relays[0];
        if (c->check_opts && r->options != c->opts) {
            fprintf(stderr, "[%s] options 0x%x, want 0x%x\n", c->name, r->options, c->opts);
            check_failures++;
        }
        for (size_t h = 0; h < 4 && c->ports[h]; h++) {
            CHECK(h < r->nhosts);
            if (h < r->nhosts && r->hosts[h].port != c->ports[h]) {
                fprintf(stderr, "[%s] host %zu port %u, want %u\n", c->name, h,
                        (unsigned)r->hosts[h].port, (unsigned)c->ports[h]);
                check_failures++;
            }
        }
        if (c->check)
            c->check(cfg);
        config_free(cfg);
    }
    check_case = NULL;
}

#define RUN(cases) run_cases((cases), sizeof(cases) / sizeof((cases)[0]))

/* ---- config_ports -------------------------------------------------------- */

static void chk_v6(const struct config *cfg)
{
    const struct relay_config *r = &cfg->relays[0];
    CHECK(r->nhosts == 4);
    CHECK_STR(r->hosts[0].host, "::1");
    CHECK_STR(r->hosts[1].host, "::1");
    CHECK_STR(r->hosts[2].host, "2001:db8::25");
    CHECK_STR(r->hosts[3].host, "fe80::1%eth0");
}

static void chk_hostnames(const struct config *cfg)
{
    const struct relay_config *r = &cfg->relays[0];
    CHECK(r->nhosts == 2);
    CHECK_STR(r->hosts[0].host, "smtp.example.com");
    CHECK_STR(r->hosts[1].host, "192.0.2.7");
}

static const struct tcase ports_cases[] = {
    {"absent port is 25", "relays = { r = { hosts = [\"h\"]; }; };", OPTS(0), .ports = {25}},
    {"port 0 is 25", "relays = { r = { hosts = [\"h:0\"]; }; };", OPTS(0), .ports = {25}},
    {"port 25 implies nothing", "relays = { r = { hosts = [\"h:25\"]; }; };", OPTS(0),
     .ports = {25}},
    {"secure_implicit without port is 465",
     "relays = { r = { hosts = [\"h\"]; options = [\"secure_implicit\"]; }; };", OPTS(IMPL),
     .ports = {465}},
    {"secure_implicit with port 0 is 465",
     "relays = { r = { hosts = [\"h:0\", \"h2\"]; options = [\"secure_implicit\"]; }; };",
     OPTS(IMPL), .ports = {465, 465}},
    {"465 implies secure_implicit", "relays = { r = { hosts = [\"h:465\"]; }; };", OPTS(IMPL),
     .ports = {465}},
    {"587 implies extended", "relays = { r = { hosts = [\"h:587\"]; }; };", OPTS(EXT),
     .ports = {587}},
    {"587 with secure", "relays = { r = { hosts = [\"h:587\"]; options = [\"secure\"]; }; };",
     OPTS(EXT | SEC), .ports = {587}},
    {"587 with extended explicit",
     "relays = { r = { hosts = [\"h:587\"]; options = [\"extended\", \"secure\"]; }; };",
     OPTS(EXT | SEC), .ports = {587}},
    {"465 with extended", "relays = { r = { hosts = [\"h:465\"]; options = [\"extended\"]; }; };",
     OPTS(EXT | IMPL), .ports = {465}},
    {"tunnel: 465 implies nothing",
     "relays = { r = { hosts = [\"h:465\"]; options = [\"tunnel\"]; }; };", OPTS(TUN),
     .ports = {465}},
    {"tunnel: 587 implies nothing",
     "relays = { r = { hosts = [\"h:587\"]; options = [\"tunnel\"]; }; };", OPTS(TUN),
     .ports = {587}},
    {"tunnel: default port still follows secure_implicit",
     "relays = { r = { hosts = [\"h\"]; options = [\"tunnel\", \"secure_implicit\"]; }; };",
     OPTS(TUN | IMPL), .ports = {465}},
    {"tunnel: 587 without extended cannot auth",
     "relays = { r = { hosts = [\"h:587\"]; options = [\"tunnel\"];\n"
     "  auth = { user = \"u\"; password = \"" INLINE_SECRET "\"; }; }; };",
     ERR("needs the 'extended' option", 2)},
    {"tunnel: mixed ports are fine",
     "relays = { r = { hosts = [\"a:465\", \"b:25\", \"c:587\"]; options = [\"tunnel\"]; }; };",
     OPTS(TUN), .ports = {465, 25, 587}},
    {"tunnel: secure on 465 is STARTTLS",
     "relays = { r = { hosts = [\"h:465\"]; options = [\"tunnel\", \"secure\"]; }; };",
     OPTS(TUN | SEC), .ports = {465}},
    {"465 with secure is refused",
     "relays = { r = {\n hosts = [\"h:465\"];\n options = [\"secure\"];\n }; };",
     ERR("port 465 implies 'secure_implicit'", 3)},
    {"secure with secure_implicit is refused",
     "relays = { r = {\n hosts = [\"h\"];\n options = [\"secure\", \"secure_implicit\"];\n }; };",
     ERR("exclude each other", 3)},
    {"hosts disagree: 465 and 25", "relays = { r = {\n hosts = [\"a:465\",\n \"b:25\"];\n }; };",
     ERR("hosts disagree", 3)},
    {"hosts disagree names the implied option",
     "relays = { r = { hosts = [\"a:25\", \"b:465\"]; }; };",
     ERR("'b:465' implies 'secure_implicit' but 'a:25' does not", 1)},
    {"hosts disagree: 587 and absent port", "relays = { r = { hosts = [\"a:587\", \"b\"]; }; };",
     ERR("implies 'extended'", 1)},
    {"hosts disagree: 465 and 587", "relays = { r = { hosts = [\"a:465\", \"b:587\"]; }; };",
     ERR("hosts disagree", 1)},
    {"explicit secure_implicit makes mixed ports agree",
     "relays = { r = { hosts = [\"a:465\", \"b:2465\", \"c\"]; "
     "options = [\"secure_implicit\"]; }; };",
     OPTS(IMPL), .ports = {465, 2465, 465}},
    {"explicit extended makes 587 and 25 agree",
     "relays = { r = { hosts = [\"a:587\", \"b:25\"]; options = [\"extended\"]; }; };", OPTS(EXT),
     .ports = {587, 25}},
    {"all hosts 587", "relays = { r = { hosts = [\"a:587\", \"b:587\"]; }; };", OPTS(EXT),
     .ports = {587, 587}},
    {"trusted_site and secure_fallback without TLS are kept",
     "relays = { r = { hosts = [\"h\"]; options = [\"trusted_site\", \"secure_fallback\"]; }; };",
     OPTS(TRUST | FALLBACK), .ports = {25}},
    {"every option word",
     "relays = { r = { hosts = [\"h\"]; options = [\"extended\", \"secure\", \"trusted_site\", "
     "\"secure_fallback\", \"prefer_ipv6\", \"tunnel\"]; }; };",
     OPTS(EXT | SEC | TRUST | FALLBACK | V6 | TUN), .ports = {25}},
    {"options as a list", "relays = { r = { hosts = (\"h\"); options = (\"prefer_ipv6\"); }; };",
     OPTS(V6), .ports = {25}},
    {"unknown option word",
     "relays = { r = { hosts = [\"h\"];\n options = [\"extended\",\n \"secure_implict\"]; }; };",
     ERR("unknown option 'secure_implict'", 3)},
    {"option listed twice",
     "relays = { r = { hosts = [\"h\"]; options = [\"secure\", \"secure\"]; "
     "}; };",
     ERR("listed twice", 1)},
    {"free_thread is not a relay option",
     "relays = { r = { hosts = [\"h\"]; options = [\"free_thread\"]; }; };",
     ERR("client library", 1)},
    {"option words are case-sensitive",
     "relays = { r = { hosts = [\"h\"]; options = [\"Secure\"]; }; };", ERR("unknown option", 1)},
    {"IPv6 forms",
     "relays = { r = { hosts = [\"[::1]:2525\", \"::1\", \"[2001:db8::25]\", "
     "\"[fe80::1%eth0]:25\"]; }; };",
     OPTS(0), .ports = {2525, 25, 25, 25}, .check = chk_v6},
    {"IPv6 on 465", "relays = { r = { hosts = [\"[::1]:465\"]; }; };", OPTS(IMPL), .ports = {465}},
    {"host names and IPv4",
     "relays = { r = { hosts = [\"smtp.example.com:2525\", \"192.0.2.7\"]; }; };", OPTS(0),
     .ports = {2525, 25}, .check = chk_hostnames},
    {"port 65535 ok", "relays = { r = { hosts = [\"h:65535\"]; }; };", .ports = {65535}},
    {"port 65536", "relays = { r = {\n hosts = [\"h:65536\"]; }; };",
     ERR("port must be a number", 2)},
    {"port 99999", "relays = { r = { hosts = [\"h:99999\"]; }; };",
     ERR("port must be a number", 1)},
    {"negative port", "relays = { r = { hosts = [\"h:-1\"]; }; };",
     ERR("port must be a number", 1)},
    {"port with letters", "relays = { r = { hosts = [\"h:smtp\"]; }; };",
     ERR("port must be a number", 1)},
    {"empty port", "relays = { r = { hosts = [\"h:\"]; }; };", ERR("port must be a number", 1)},
    {"port with spaces", "relays = { r = { hosts = [\"h: 25\"]; }; };",
     ERR("port must be a number", 1)},
    {"long port", "relays = { r = { hosts = [\"h:0000025\"]; }; };",
     ERR("port must be a number", 1)},
    {"empty host", "relays = { r = { hosts = [\":25\"]; }; };", ERR("not a valid host name", 1)},
    {"empty string host", "relays = { r = { hosts = [\"\"]; }; };",
     ERR("not a valid host name", 1)},
    {"host with space", "relays = { r = { hosts = [\"smtp example\"]; }; };",
     ERR("not a valid host name", 1)},
    {"host starting with dash", "relays = { r = { hosts = [\"-oProxy\"]; }; };",
     ERR("not a valid host name", 1)},
    {"host with control character", "relays = { r = { hosts = [\"a\\nb\"]; }; };",
     ERR("host 'a\\x0ab' is not a valid host name", 1)},
    {"unclosed bracket", "relays = { r = { hosts = [\"[::1:25\"]; }; };", ERR("missing ']'", 1)},
    {"brackets around a name", "relays = { r = { hosts = [\"[smtp.example.com]:25\"]; }; };",
     ERR("only IPv6 addresses", 1)},
    {"text after bracket", "relays = { r = { hosts = [\"[::1]25\"]; }; };", ERR("after ']'", 1)},
    {"bad bare IPv6", "relays = { r = { hosts = [\"a:b:c\"]; }; };", ERR("not a valid IPv6", 1)},
};

static void group_ports(void)
{
    RUN(ports_cases);
}

/* ---- config_auth ---------------------------------------------------------- */

static void chk_inline(const struct config *cfg)
{
    const struct relay_config *r = &cfg->relays[0];
    CHECK(r->has_auth);
    CHECK_STR(r->auth_user, "app@example.com");
    CHECK_STR(r->auth_password, INLINE_SECRET);
    CHECK(r->auth_password_file == NULL);
    CHECK(r->auth_mechanisms == 0);
    CHECK(r->allow_plaintext_auth == 0);
}

static char pw600_path[PATH_MAX + 16];

static void chk_file(const struct config *cfg)
{
    const struct relay_config *r = &cfg->relays[0];
    CHECK(r->has_auth);
    CHECK_STR(r->auth_password, FILE_SECRET);
    CHECK_STR(r->auth_password_file, pw600_path);
}

static void chk_secret_only(const struct config *cfg)
{
    CHECK_STR(cfg->relays[0].auth_password, FILE_SECRET);
}

static void chk_mechs(const struct config *cfg)
{
    CHECK(cfg->relays[0].auth_mechanisms ==
          (AUTH_MECH_PLAIN | AUTH_MECH_SCRAM_SHA_256 | AUTH_MECH_XOAUTH2));
    CHECK(cfg->relays[0].allow_plaintext_auth == 1);
}

static void chk_no_auth(const struct config *cfg)
{
    CHECK(!cfg->relays[0].has_auth);
    CHECK(cfg->relays[0].auth_user == NULL);
    CHECK(cfg->relays[0].auth_password == NULL);
}

#define AUTH_HEAD "relays = { r = { hosts = [\"h:587\"];\n"

static const struct tcase auth_cases[] = {
    {"auth without extended on 25",
     "relays = { r = { hosts = [\"h\"];\n auth = { user = \"u\"; password = \"" INLINE_SECRET
     "\"; }; }; };",
     ERR("'auth' needs the 'extended' option", 2)},
    {"auth without extended on 465",
     "relays = { r = { hosts = [\"h:465\"];\n auth = { user = \"u\"; password = \"" INLINE_SECRET
     "\"; }; }; };",
     ERR("needs the 'extended' option", 2)},
    {"auth with explicit extended on 25",
     "relays = { r = { hosts = [\"h\"]; options = [\"extended\", \"secure\"];\n"
     " auth = { user = \"app@example.com\"; password = \"" INLINE_SECRET "\"; }; }; };",
     OPTS(EXT | SEC), .ports = {25}, .check = chk_inline},
    {"auth on 587 with inline password",
     AUTH_HEAD " auth = { user = \"app@example.com\"; password = \"" INLINE_SECRET "\"; }; }; };",
     OPTS(EXT), .check = chk_inline},
    {"auth on 465 with extended",
     "relays = { r = { hosts = [\"h:465\"]; options = [\"extended\"];\n"
     " auth = { user = \"app@example.com\"; password = \"" INLINE_SECRET "\"; }; }; };",
     OPTS(EXT | IMPL), .check = chk_inline},
    {"password_file 0600",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pw600\"; }; }; };",
     .check = chk_file},
    {"password_file 0400 without newline",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pw400\"; }; }; };",
     .check = chk_secret_only},
    {"password_file CRLF",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pwcrlf\"; }; }; };",
     .check = chk_secret_only},
    {"password_file 0644",
     AUTH_HEAD " auth = { user = \"u\";\n password_file = \"@DIR@/pw644\"; }; }; };",
     ERR("accessible by group or others (mode 0644)", 3)},
    {"password_file 0640",
     AUTH_HEAD " auth = { user = \"u\";\n password_file = \"@DIR@/pw640\"; }; }; };",
     ERR("accessible by group or others (mode 0640)", 3)},
    {"password_file 0604",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pw604\"; }; }; };",
     ERR("chmod 600", 2)},
    {"password_file missing",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/nonexistent\"; }; }; };",
     ERR("cannot open password_file", 2)},
    {"password_file empty",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pwempty\"; }; }; };",
     ERR("is empty", 2)},
    {"password_file with an empty first line",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pwnewline\"; }; }; };",
     ERR("is empty", 2)},
    {"password_file is a directory",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pwdir\"; }; }; };",
     ERR("not a regular file", 2)},
    {"password_file is a device",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"/dev/null\"; }; }; };",
     ERR("not a regular file", 2)},
    {"password_file relative",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"pw600\"; }; }; };",
     ERR("absolute path", 2)},
    {"password and password_file",
     AUTH_HEAD " auth = { user = \"u\"; password = \"" INLINE_SECRET "\";\n"
               " password_file = \"@DIR@/pw600\"; }; }; };",
     ERR("exclude each other", 3)},
    {"neither password nor password_file", AUTH_HEAD " auth = { user = \"u\"; }; }; };",
     ERR("needs one of 'password_file' (preferred), 'password'", 2)},
    {"no user", AUTH_HEAD " auth = { password = \"" INLINE_SECRET "\"; }; }; };",
     ERR("needs 'user'", 2)},
    {"empty user", AUTH_HEAD " auth = { user = \"\"; password = \"x\"; }; }; };",
     ERR("must not be empty", 2)},
    {"user with newline", AUTH_HEAD " auth = { user = \"a\\nb\"; password = \"x\"; }; }; };",
     ERR("control character", 2)},
    {"empty password", AUTH_HEAD " auth = { user = \"u\"; password = \"\"; }; }; };",
     ERR("must not be empty", 2)},
    {"password not a string", AUTH_HEAD " auth = { user = \"u\"; password = 1234; }; }; };",
     ERR("'auth.password' must be a string", 2)},
    {"mechanisms",
     AUTH_HEAD " auth = { user = \"u\"; password_file = \"@DIR@/pw600\";\n"
               " mechanisms = [\"plain\", \"SCRAM-SHA-256\", \"XOAUTH2\"]; };\n"
               " allow_plaintext_auth = true; }; };",
     .check = chk_mechs},
    {"unknown mechanism",
     AUTH_HEAD
     " auth = { user = \"u\"; password = \"x\";\n mechanisms = [\"PLAIN\", \"DIGEST-MD5\"]; "
     "}; }; };",
     ERR("unknown mechanism 'DIGEST-MD5'", 3)},
    {"empty mechanisms",
     AUTH_HEAD " auth = { user = \"u\"; password = \"x\"; mechanisms = []; }; }; };",
     ERR("'auth.mechanisms' is empty", 2)},
    {"no auth section", "relays = { r = { hosts = [\"h:587\"]; }; };", .check = chk_no_auth},
    {"auth not a group", AUTH_HEAD " auth = \"u:p\"; }; };", ERR("'auth' must be a group", 2)},
};

static void group_auth(void)
{
    snprintf(pw600_path, sizeof(pw600_path), "%s/pw600", tmpdir);
    RUN(auth_cases);
}

/* ---- config_unknown_keys ------------------------------------------------- */

static void chk_budgets(const struct config *cfg)
{
    const struct relay_config *r = &cfg->relays[0];
    CHECK(r->budget.messages_per_second == 14 && r->budget.messages_per_minute == 600);
    CHECK(r->budget.max_recipients == 50 && r->budget.max_logins_per_minute == 3);
    CHECK(r->pool.max_messages == 100); /* limits.max_messages is below the default 1000 */
}

/* The smaller of pool.max_messages and limits.max_messages applies. */
static void chk_budget_pool_cap(const struct config *cfg)
{
    CHECK(cfg->relays[0].pool.max_messages == 10);
    CHECK(cfg->relays[0].budget.messages_per_second == 0);
}

static const struct tcase unknown_cases[] = {
    {"misspelt password_file",
     "relays = {\n  smarthost = {\n    hosts = [\"h:587\"];\n    auth = {\n      user = \"u\";\n"
     "      pasword_file = \"@DIR@/pw600\";\n    };\n  };\n};\n",
     ERR("unknown key 'pasword_file' in auth of relay 'smarthost' (did you mean 'password_file'?)",
         6)},
    {"misspelt relay key", "relays = { r = {\n hots = [\"h\"]; }; };",
     ERR("unknown key 'hots' in relay 'r' (did you mean 'hosts'?)", 2)},
    {"unknown relay key without a near miss",
     "relays = { r = { hosts = [\"h\"];\n frobnicate = 1; }; };",
     ERR("unknown key 'frobnicate' in relay 'r'", 2)},
    {"unknown daemon key",
     "daemon = {\n spool = \"/x\"; };\nrelays = { r = { hosts = [\"h\"]; }; };",
     ERR("unknown key 'spool' in daemon", 2)},
    {"unknown top-level key", "relay = { r = { hosts = [\"h\"]; }; };",
     ERR("unknown top-level key 'relay' (did you mean 'relays'?)", 1)},
    {"unknown tls key", "relays = { r = { hosts = [\"h\"];\n tls = { cafile = \"/x\"; }; }; };",
     ERR("unknown key 'cafile' in tls of relay 'r' (did you mean 'ca_file'?)", 2)},
    {"unknown pool key", "relays = { r = { hosts = [\"h\"];\n pool = { max_conn = 2; }; }; };",
     ERR("unknown key 'max_conn' in pool of relay 'r'", 2)},
    {"unknown timeouts key", "relays = { r = { hosts = [\"h\"];\n timeouts = { data = 2; }; }; };",
     ERR("unknown key 'data' in timeouts of relay 'r'", 2)},
    /* routing and address fixing */
    {"route to an unknown relay",
     "relays = { r = { hosts = [\"h\"]; }; };\nroutes = ( { sender_domain = \"x\"; relay = \"q\"; "
     "} );",
     ERR("route relay 'q' is not defined in 'relays'", 2)},
    {"route without a condition",
     "relays = { r = { hosts = [\"h\"]; }; };\nroutes = ( {\n relay = \"r\"; } );",
     ERR("a route needs at least one of", 2)},
    {"route with an unknown key",
     "relays = { r = { hosts = [\"h\"]; }; };\nroutes = ( {\n domain = \"x\"; relay = \"r\"; } );",
     ERR("unknown key 'domain' in a route", 3)},
    {"route with an unknown user",
     "relays = { r = { hosts = [\"h\"]; }; };\nroutes = ( {\n user = \"no-such-user-x\"; relay = "
     "\"r\"; } );",
     ERR("no such user 'no-such-user-x'", 3)},
    /* budgets */
    {"rate and limits",
     "relays = { r = { hosts = [\"h\"];\n rate = { messages_per_second = 14;"
     " messages_per_minute = 600; max_recipients = 50; };\n limits = { max_logins_per_minute = 3;"
     " max_messages = 100; }; }; };",
     .check = chk_budgets},
    {"limits.max_messages above pool.max_messages",
     "relays = { r = { hosts = [\"h\"];\n pool = { max_messages = 10; };"
     " limits = { max_messages = 100; }; }; };",
     .check = chk_budget_pool_cap},
    {"unknown rate key", "relays = { r = { hosts = [\"h\"];\n rate = { per_second = 1; }; }; };",
     ERR("unknown key 'per_second' in rate of relay 'r'", 2)},
    {"unknown limits key", "relays = { r = { hosts = [\"h\"];\n limits = { logins = 1; }; }; };",
     ERR("unknown key 'logins' in limits of relay 'r'", 2)},
    {"negative rate", "relays = { r = { hosts = [\"h\"];\n rate = { max_recipients = -1; }; }; };",
     ERR("'rate.max_recipients' must not be negative", 2)},
    {"rate not a group", "relays = { r = { hosts = [\"h\"];\n rate = 5; }; };",
     ERR("'rate' must be a group", 2)},
    {"relay allow with an unknown group",
     "relays = { r = { hosts = [\"h\"];\n allow = { groups = [\"no-such-group-x\"]; }; }; };",
     ERR("no such group 'no-such-group-x'", 2)},
    {"daemon allow with an unknown key",
     "daemon = { allow = {\n user = [\"root\"]; }; };\nrelays = { r = { hosts = [\"h\"]; }; };",
     ERR("unknown key 'user' in daemon.allow (did you mean 'users'?)", 2)},
    {"sender without a domain", "relays = { r = { hosts = [\"h\"];\n sender = \"ab\"; }; };",
     ERR("'sender' must be a full address local@domain", 2)},
    {"alias that is no address",
     "relays = { r = { hosts = [\"h\"]; aliases = {\n root = \"a b@c\"; }; }; };",
     ERR("'aliases.root' is not a valid address", 2)},
    {"from_header unknown", "relays = { r = { hosts = [\"h\"];\n from_header = \"replace\"; }; };",
     ERR("'from_header' must be \"keep\", \"rewrite\" or \"add_if_missing\"", 2)},
    {"qualify_domain not a domain",
     "relays = { r = { hosts = [\"h\"];\n qualify_domain = \"a b\"; }; };",
     ERR("'qualify_domain' must be a domain name", 2)},
    {"proxy without tunnel",
     "relays = { r = { hosts = [\"h\"];\n proxy = \"socks5://127.0.0.1:1080\"; }; };",
     ERR("'proxy' needs the 'tunnel' option", 2)},
    {"proxy without port",
     "relays = { r = { hosts = [\"h\"]; options = [\"tunnel\"];\n"
     " proxy = \"socks5://u:pw@127.0.0.1\"; }; };",
     ERR("'proxy': the proxy needs a port", 2)},
    {"proxy http with an empty password",
     "relays = { r = { hosts = [\"h\"]; options = [\"tunnel\"];\n"
     " proxy = \"http://u:@127.0.0.1:3128\"; }; };",
     ERR("'proxy': user and password must be 1-255 bytes each", 2)},
    {"password_command empty",
     "relays = { r = { hosts = [\"h:587\"]; auth = { user = \"u\";\n password_command = \"\"; }; "
     "}; };",
     ERR("'auth.password_command' must not be empty", 2)},
    {"password_command and password",
     "relays = { r = { hosts = [\"h:587\"]; auth = { user = \"u\"; password = \"x\";\n"
     " password_command = \"x\"; }; }; };",
     ERR("'auth.password' and 'auth.password_command' exclude each other", 2)},
    {"credential is a path",
     "relays = { r = { hosts = [\"h:587\"]; auth = { user = \"u\";\n credential = \"a/b\"; }; }; "
     "};",
     ERR("must be a plain name", 2)},
    {"password_command_ttl negative",
     "relays = { r = { hosts = [\"h:587\"]; auth = { user = \"u\"; password_command = \"x\";\n"
     " password_command_ttl = -1; }; }; };",
     ERR("password_command_ttl", 2)},
    {"pin_sha256 not a digest",
     "relays = { r = { hosts = [\"h\"]; tls = {\n pin_sha256 = [\"x\"]; }; }; };",
     ERR("'tls.pin_sha256' entry \"x\" is not a base64 SHA-256 digest", 2)},
    {"pin_sha256 empty list",
     "relays = { r = { hosts = [\"h\"]; tls = {\n pin_sha256 = []; }; }; };",
     ERR("'tls.pin_sha256' is empty", 2)},
    {"client_cert missing file",
     "relays = { r = { hosts = [\"h\"]; tls = {\n client_cert = \"/nonexistent/x\"; }; }; };",
     ERR("tls.client_cert '/nonexistent/x': No such file or directory", 2)},
    {"client_key without client_cert",
     "relays = { r = { hosts = [\"h\"]; tls = {\n client_key = \"/etc/hostname\"; }; }; };",
     ERR("'tls.client_key' needs 'tls.client_cert'", 2)},
    {"ciphers with spaces",
     "relays = { r = { hosts = [\"h\"]; tls = {\n ciphers = \"AES128 SHA\"; }; }; };",
     ERR("'tls.ciphers' must be a list of suite names", 2)},
};

static void group_unknown_keys(void)
{
    RUN(unknown_cases);
}

/* ---- config_types --------------------------------------------------------- */

static void chk_big_size(const struct config *cfg)
{
    CHECK(cfg->max_message_size == 2147483648u);
}

static void chk_int64_size(const struct config *cfg)
{
    CHECK(cfg->max_message_size == 100000000u);
}

static void chk_helo(const struct config *cfg)
{
    CHECK_STR(cfg->relays[0].helo_name, "[192.0.2.1]");
}

static void chk_tls(const struct config *cfg)
{
    const struct relay_config *r = &cfg->relays[0];
    char want[PATH_MAX + 16];
    snprintf(want, sizeof(want), "%s/ca.pem", tmpdir);
    CHECK_STR(r->tls_ca_file, want);
    snprintf(want, sizeof(want), "%s/cadir", tmpdir);
    CHECK_STR(r->tls_ca_path, want);
    CHECK_STR(r->tls_server_name, "smtp.example.com");
    CHECK_STR(r->tls_min_version, "1.0");
}

#define R1 "relays = { r = { hosts = [\"h\"];\n"
#define R1_END " }; };"
#define D1(x) "daemon = {\n " x " };\nrelays = { r = { hosts = [\"h\"]; }; };"

static const struct tcase types_cases[] = {
    {"timeout as a string", R1 " timeout = \"60\";" R1_END,
     ERR("'timeout' must be an integer, not a string", 2)},
    {"timeout negative", R1 " timeout = -1;" R1_END, ERR("'timeout' must not be negative", 2)},
    {"timeout decimal", R1 " timeout = 1.5;" R1_END,
     ERR("must be an integer, not a decimal number", 2)},
    {"timeout bool", R1 " timeout = true;" R1_END, ERR("must be an integer", 2)},
    {"timeout too large", R1 " timeout = 100000;" R1_END,
     ERR("'timeout' must be between 0 and 86400", 2)},
    {"timeout int64 too large", R1 " timeout = 10000000000L;" R1_END, ERR("must be between", 2)},
    {"phase timeout string", R1 " timeouts = { connect = \"x\"; };" R1_END,
     ERR("'timeouts.connect' must be an integer", 2)},
    {"phase timeout negative", R1 " timeouts = { data_end = -600; };" R1_END,
     ERR("'timeouts.data_end' must not be negative", 2)},
    {"timeouts not a group", R1 " timeouts = 5;" R1_END, ERR("'timeouts' must be a group", 2)},
    {"hosts as a string", "relays = { r = {\n hosts = \"h\"; }; };",
     ERR("'hosts' must be a list", 2)},
    {"hosts of integers", "relays = { r = {\n hosts = [ 25 ]; }; };",
     ERR("'hosts' must contain only strings", 2)},
    {"hosts mixed list", "relays = { r = { hosts = ( \"h\",\n 25 ); }; };",
     ERR("'hosts' must contain only strings", 2)},
    {"hosts empty", "relays = { r = {\n hosts = []; }; };", ERR("'hosts' is empty", 2)},
    {"hosts missing", "relays = {\n r = { mode = \"relay\"; }; };", ERR("'hosts' is missing", 2)},
    {"options as a string", R1 " options = \"extended\";" R1_END,
     ERR("'options' must be a list", 2)},
    {"bool as a string", R1 " allow_plaintext_auth = \"yes\";" R1_END,
     ERR("'allow_plaintext_auth' must be true or false", 2)},
    {"mode unknown", R1 " mode = \"fast\";" R1_END,
     ERR("'mode' must be \"queue\" or \"relay\"", 2)},
    {"mode as an integer", R1 " mode = 1;" R1_END, ERR("'mode' must be a string", 2)},
    {"helo_name with a space", R1 " helo_name = \"my host\";" R1_END,
     ERR("'helo_name' must be", 2)},
    {"helo_name address literal", R1 " helo_name = \"[192.0.2.1]\";" R1_END, .check = chk_helo},
    {"helo_name bad address literal", R1 " helo_name = \"[192.0.2]\";" R1_END,
     ERR("'helo_name'", 2)},
    {"min_version 1.4", R1 " tls = { min_version = \"1.4\"; };" R1_END,
     ERR("'tls.min_version' must be", 2)},
    {"min_version as a number", R1 " tls = { min_version = 1.2; };" R1_END,
     ERR("'tls.min_version' must be a string", 2)},
    {"min_version 1.0 without secure_fallback", R1 " tls = { min_version = \"1.0\"; };" R1_END,
     ERR("needs the 'secure_fallback' option", 2)},
    {"tls values",
     "relays = { r = { hosts = [\"h\"]; options = [\"secure\", \"secure_fallback\"];\n"
     " tls = { ca_file = \"@DIR@/ca.pem\"; ca_path = \"@DIR@/cadir\";"
     " server_name = \"smtp.example.com\"; min_version = \"1.0\"; }; }; };",
     .check = chk_tls},
    {"ca_file missing", R1 " tls = { ca_file = \"@DIR@/nope.pem\"; };" R1_END,
     ERR("No such file or directory", 2)},
    {"ca_file relative", R1 " tls = { ca_file = \"ca.pem\"; };" R1_END, ERR("absolute path", 2)},
    {"ca_path not a directory", R1 " tls = { ca_path = \"@DIR@/ca.pem\"; };" R1_END,
     ERR("not a directory", 2)},
    {"server_name bad", R1 " tls = { server_name = \"a b\"; };" R1_END,
     ERR("'tls.server_name'", 2)},
    {"pool max_connections 0", R1 " pool = { max_connections = 0; };" R1_END,
     ERR("'pool.max_connections' must be between 1 and 1024", 2)},
    {"pool min_idle above max", R1 " pool = { max_connections = 2;\n min_idle = 3; };" R1_END,
     ERR("'pool.min_idle' (3) exceeds 'pool.max_connections' (2)", 3)},
    {"pool negative", R1 " pool = { keepalive = -60; };" R1_END, ERR("must not be negative", 2)},
    {"pool idle_timeout 0", R1 " pool = { idle_timeout = 0; };" R1_END, ERR("between 1 and", 2)},
    {"pool as a list", R1 " pool = ( 1 );" R1_END, ERR("'pool' must be a group", 2)},
    {"max_message_size 0", D1("max_message_size = 0;"),
     ERR("'max_message_size' must be between 1", 2)},
    {"max_message_size 2 GiB as int64", D1("max_message_size = 2147483648L;"),
     .check = chk_big_size},
    {"max_message_size small int64", D1("max_message_size = 100000000L;"), .check = chk_int64_size},
    {"max_message_size above 2 GiB", D1("max_message_size = 3000000000L;"),
     ERR("'max_message_size' must be between 1 and 2147483648", 2)},
    {"integer that libconfig would wrap", D1("max_message_size = 3000000000;"),
     ERR("integer 3000000000 does not fit in 32 bits", 2)},
    {"integer wrapping to a plausible value", R1 " timeout = 4294967356;" R1_END,
     ERR("does not fit in 32 bits", 2)},
    {"negative integer that would wrap", R1 " timeout = -2147483649;" R1_END,
     ERR("integer -2147483649 does not fit", 2)},
    {"hex integer that would wrap", R1 " timeout = 0x100000000;" R1_END, ERR("does not fit", 2)},
    {"huge integer", R1 "\n timeout = 99999999999999999999999999999999999;" R1_END,
     ERR("does not fit", 3)},
    {"large numbers in strings and comments are fine",
     "# 99999999999\n/* 88888888888 */ // 77777777777\n"
     "relays = { r9 = { hosts = [\"h:25\"]; helo_name = \"x99999999999\"; timeout = 5; }; };",
     .ports = {25}},
    {"max_clients negative", D1("max_clients = -5;"), ERR("'max_clients' must not be negative", 2)},
    {"client_timeout 0", D1("client_timeout = 0;"), ERR("'client_timeout' must be between 1", 2)},
    {"log_level unknown", D1("log_level = \"verbose\";"), ERR("'log_level' must be", 2)},
    {"log_level integer", D1("log_level = 3;"), ERR("'log_level' must be a string", 2)},
    {"hostname empty", D1("hostname = \"\";"), ERR("'hostname' must not be empty", 2)},
    {"hostname bad", D1("hostname = \"a/b\";"), ERR("'hostname' must be a host name", 2)},
    {"submit_socket relative", D1("submit_socket = \"submit.sock\";"), ERR("absolute path", 2)},
    {"submit_socket too long",
     D1("submit_socket = "
        "\"/run/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\";"),
     ERR("too long for a Unix socket path", 2)},
    {"same socket twice",
     D1("submit_socket = \"/run/x.sock\";\n control_socket = \"/run/x.sock\";"),
     ERR("must differ", 1)},
    {"spool_dir relative", D1("spool_dir = \"spool\";"), ERR("absolute path", 2)},
    {"daemon not a group", "daemon = 1;\nrelays = { r = { hosts = [\"h\"]; }; };",
     ERR("'daemon' must be a group", 1)},
    {"relays not a group", "relays = ( \"h\" );", ERR("'relays' must be a group", 1)},
    {"relay not a group", "relays = {\n r = \"h:25\"; };", ERR("'r' must be a group", 2)},
    {"relay name too long",
     "relays = {\n r12345678901234567890123456789012345678901234567890123456789012345 = "
     "{ hosts = [\"h\"]; }; };",
     ERR("must be 1-64 of", 2)},
    {"relay name with star", "relays = {\n a*b = { hosts = [\"h\"]; }; };",
     ERR("relay name 'a*b'", 2)},
    {"no relays", "daemon = { log_level = \"debug\"; };",
     ERR("no 'relays' section: at least one relay is required", 0)},
    {"empty file", "", ERR("no 'relays' section", 0)},
    {"empty relays", "relays = { };", ERR("'relays' is empty", 1)},
    {"several relays without default_relay",
     "relays = {\n a = { hosts = [\"h\"]; };\n b = { hosts = [\"h\"]; }; };",
     ERR("several relays but no 'default_relay'", 1)},
    {"default_relay unknown",
     "default_relay = \"c\";\nrelays = {\n a = { hosts = [\"h\"]; };\n b = { hosts = [\"h\"]; }; "
     "};",
     ERR("default_relay 'c' is not defined", 1)},
    {"default_relay not a string", "default_relay = 1;\nrelays = { a = { hosts = [\"h\"]; }; };",
     ERR("'default_relay' must be a string", 1)},
};

static void group_types(void)
{
    RUN(types_cases);
}

/* ---- config_spool --------------------------------------------------------- */

#define RELAY_ONLY "\nrelays = { r = { hosts = [\"h\"]; }; };"

static void chk_spool_defaults(const struct config *cfg)
{
    const struct spool_config *sp = &cfg->spool;
    CHECK(sp->min_free == 64u * 1024 * 1024);
    CHECK(sp->max_queue_lifetime == 432000);
    CHECK(sp->retry_min == 60);
    CHECK(sp->retry_max == 3600);
    CHECK(sp->bounce_to == NULL);
    CHECK(sp->bounce_rate == 60);
    CHECK(sp->bounce_max_original == 1024 * 1024);
}

static void chk_spool_explicit(const struct config *cfg)
{
    const struct spool_config *sp = &cfg->spool;
    CHECK(sp->min_free == 10000000000ULL);
    CHECK(sp->max_queue_lifetime == 5);
    CHECK(sp->retry_min == 1);
    CHECK(sp->retry_max == 2);
    CHECK_STR(sp->bounce_to, "ops@example.com");
    CHECK(sp->bounce_rate == 3);
    CHECK(sp->bounce_max_original == 0);
}

static void chk_spool_limits(const struct config *cfg)
{
    const struct spool_config *sp = &cfg->spool;
    CHECK(sp->min_free == 0);
    CHECK(sp->max_queue_lifetime == 365u * 86400);
    CHECK(sp->retry_min == 86400 && sp->retry_max == 86400);
    CHECK(sp->bounce_max_original == 2147483648u);
    CHECK_STR(sp->bounce_to, "postmaster");
}

static void chk_spool_small_int64(const struct config *cfg)
{
    CHECK(cfg->spool.min_free == 1048576);
    CHECK(cfg->spool.bounce_max_original == 4096);
    CHECK(cfg->spool.retry_min == 600 && cfg->spool.retry_max == 3600);
}

static const struct tcase spool_cases[] = {
    {"no spool section", "relays = { r = { hosts = [\"h\"]; }; };", .check = chk_spool_defaults},
    {"empty spool section", "spool = { };" RELAY_ONLY, .check = chk_spool_defaults},
    {"explicit values",
     "spool = {\n min_free = 10000000000L; max_queue_lifetime = 5; retry_min = 1;\n"
     " retry_max = 2; bounce_to = \"ops@example.com\"; bounce_rate = 3;\n"
     " bounce_max_original = 0; };" RELAY_ONLY,
     .check = chk_spool_explicit},
    {"limits",
     "spool = { min_free = 0; max_queue_lifetime = 31536000; retry_min = 86400;\n"
     " retry_max = 86400; bounce_max_original = 2147483648L; bounce_to = \"postmaster\"; "
     "};" RELAY_ONLY,
     .check = chk_spool_limits},
    {"L suffix on small values, retry_min alone",
     "spool = { min_free = 1048576L; bounce_max_original = 4096L; retry_min = 600; };" RELAY_ONLY,
     .check = chk_spool_small_int64},
    {"min_free wide without L", "spool = {\n min_free = 10000000000; };" RELAY_ONLY,
     ERR("does not fit in 32 bits", 2)},
    {"min_free negative", "spool = {\n min_free = -1; };" RELAY_ONLY,
     ERR("spool: 'min_free' must not be negative", 2)},
    {"min_free not an integer", "spool = {\n min_free = 1.5; };" RELAY_ONLY,
     ERR("'min_free' must be an integer, not a decimal number", 2)},
    {"min_free as a string", "spool = {\n min_free = \"64M\"; };" RELAY_ONLY,
     ERR("'min_free' must be an integer, not a string", 2)},
    {"max_queue_lifetime 0", "spool = {\n max_queue_lifetime = 0; };" RELAY_ONLY,
     ERR("'max_queue_lifetime' must be between 1 and 31536000", 2)},
    {"max_queue_lifetime over a year", "spool = {\n max_queue_lifetime = 31536001; };" RELAY_ONLY,
     ERR("'max_queue_lifetime' must be between 1 and 31536000", 2)},
    {"retry_min 0", "spool = {\n retry_min = 0; };" RELAY_ONLY,
     ERR("'retry_min' must be between 1 and 86400", 2)},
    {"retry_max over a day", "spool = {\n retry_max = 86401; };" RELAY_ONLY,
     ERR("'retry_max' must be between 1 and 86400", 2)},
    {"retry_max below retry_min", "spool = { retry_min = 600;\n retry_max = 60; };" RELAY_ONLY,
     ERR("'retry_max' (60) is less than 'retry_min' (600)", 2)},
    {"retry_min above the default retry_max", "spool = {\n retry_min = 7200; };" RELAY_ONLY,
     ERR("'retry_max' (3600) is less than 'retry_min' (7200)", 2)},
    {"bounce_rate 0", "spool = {\n bounce_rate = 0; };" RELAY_ONLY,
     ERR("'bounce_rate' must be between 1 and", 2)},
    {"bounce_max_original over 2 GiB",
     "spool = {\n bounce_max_original = 2147483649L; };" RELAY_ONLY,
     ERR("'bounce_max_original' must be between 0 and 2147483648", 2)},
    {"bounce_max_original negative", "spool = {\n bounce_max_original = -5; };" RELAY_ONLY,
     ERR("'bounce_max_original' must not be negative", 2)},
    {"bounce_to empty", "spool = {\n bounce_to = \"\"; };" RELAY_ONLY,
     ERR("'bounce_to' must not be empty", 2)},
    {"bounce_to not a string", "spool = {\n bounce_to = 5; };" RELAY_ONLY,
     ERR("'bounce_to' must be a string, not an integer", 2)},
    {"bounce_to with brackets", "spool = {\n bounce_to = \"<ops@example.com>\"; };" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address", 2)},
    {"bounce_to with a display name",
     "spool = {\n bounce_to = \"Ops <ops@example.com>\"; };" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address", 2)},
    {"bounce_to two addresses",
     "spool = {\n bounce_to = \"a@example.com,b@example.com\"; };" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address", 2)},
    {"bounce_to CRLF",
     "spool = {\n bounce_to = \"ops@example.com\\r\\nRCPT TO:<x@y>\"; };" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address", 2)},
    {"bounce_to double @", "spool = {\n bounce_to = \"a@b@example.com\"; };" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address", 2)},
    {"bounce_to UTF-8", "spool = {\n bounce_to = \"j\xc3\xb6rg@example.com\"; };" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address", 2)},
    {"bounce_to local part too long",
     "spool = {\n bounce_to = "
     "\"llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllx@example.com\"; "
     "};" RELAY_ONLY,
     ERR("'bounce_to' is not a valid address: local part too long", 2)},
    {"misspelt key", "spool = {\n retry_mn = 5; };" RELAY_ONLY,
     ERR("unknown key 'retry_mn' in spool (did you mean 'retry_min'?)", 2)},
    {"spool not a group", "spool = 5;" RELAY_ONLY, ERR("'spool' must be a group", 1)},
    {"spool inside daemon", "daemon = {\n spool = { }; };" RELAY_ONLY,
     ERR("unknown key 'spool' in daemon", 2)},
    /* bounce_to is allocated before the relays fail to load: freed, not leaked (ASan). */
    {"bounce_to then a bad relay",
     "spool = { bounce_to = \"ops@example.com\"; };\nrelays = { r = {\n hosts = [\"h:99999\"]; "
     "}; };",
     ERR("port", 3)},
};

static void group_spool(void)
{
    RUN(spool_cases);
}

/* ---- config_defaults ------------------------------------------------------ */

static void chk_defaults(const struct config *cfg)
{
    char host[HOST_NAME_MAX + 1] = "";
    gethostname(host, sizeof(host));
    host[HOST_NAME_MAX] = '\0';
    CHECK_STR(cfg->path, conf_path);
    CHECK_STR(cfg->hostname, host);
    CHECK_STR(cfg->submit_socket, MAILPOOL_DEFAULT_SUBMIT_SOCKET);
    CHECK_STR(cfg->control_socket, MAILPOOL_DEFAULT_CONTROL_SOCKET);
    CHECK_STR(cfg->spool_dir, MAILPOOL_DEFAULT_SPOOL_DIR);
    CHECK(cfg->max_message_size == 36700160);
    CHECK(cfg->max_clients == 1024);
    CHECK(cfg->client_timeout == 300);
    CHECK(cfg->log_level == LOG_LVL_INFO);
    CHECK(cfg->nrelays == 1);
    CHECK(cfg->default_relay == 0);
    chk_spool_defaults(cfg);

    const struct relay_config *r = &cfg->relays[0];
    CHECK_STR(r->name, "only");
    CHECK(r->line == 1);
    CHECK(r->nhosts == 1);
    CHECK_STR(r->hosts[0].host, "smtp.example.com");
    CHECK(r->hosts[0].port == 25);
    CHECK(r->options == 0);
    CHECK(r->timeout == 60);
    CHECK(r->timeouts.connect == 30);
    CHECK(r->timeouts.greeting == 60);
    CHECK(r->timeouts.command == 60);
    CHECK(r->timeouts.data_block == 60);
    CHECK(r->timeouts.data_end == 60);
    CHECK(r->mode == MODE_QUEUE);
    CHECK(r->helo_name == NULL);
    CHECK(!r->has_auth && !r->auth_user && !r->auth_password && !r->auth_password_file);
    CHECK(r->auth_mechanisms == 0);
    CHECK(r->allow_plaintext_auth == 0);
    CHECK(!r->tls_ca_file && !r->tls_ca_path && !r->tls_server_name && !r->tls_min_version);
    CHECK(r->pool.max_connections == 4);
    CHECK(r->pool.min_idle == 0);
    CHECK(r->pool.idle_timeout == 300);
    CHECK(r->pool.keepalive == 60);
    CHECK(r->pool.max_messages == 1000);
    CHECK(r->pool.max_age == 3600);
    CHECK(r->pool.max_waiters == 1000);
    CHECK(r->pool.wait_timeout == 60);
    CHECK(config_relay(cfg, "only") == r);
    CHECK(config_relay(cfg, "other") == NULL);
    CHECK(config_relay(cfg, NULL) == NULL);
    CHECK(config_relay(NULL, "only") == NULL);
}

static void chk_explicit(const struct config *cfg)
{
    CHECK_STR(cfg->hostname, "mx.example.org");
    CHECK_STR(cfg->submit_socket, "/tmp/s.sock");
    CHECK_STR(cfg->control_socket, "/tmp/c.sock");
    CHECK_STR(cfg->spool_dir, "/srv/spool");
    CHECK(cfg->max_message_size == 1000);
    CHECK(cfg->max_clients == 5);
    CHECK(cfg->client_timeout == 7);
    CHECK(cfg->log_level == LOG_LVL_DEBUG);
    const struct relay_config *r = &cfg->relays[0];
    CHECK(r->mode == MODE_RELAY);
    CHECK_STR(r->helo_name, "client.example.org");
    CHECK(r->pool.max_connections == 8 && r->pool.min_idle == 2 && r->pool.idle_timeout == 10 &&
          r->pool.keepalive == 0 && r->pool.max_messages == 0 && r->pool.max_age == 0 &&
          r->pool.max_waiters == 5 && r->pool.wait_timeout == 3);
}

static void chk_timeout0(const struct config *cfg)
{
    const struct relay_timeouts *t = &cfg->relays[0].timeouts;
    CHECK(cfg->relays[0].timeout == 0);
    CHECK(t->connect == 0 && t->greeting == 0 && t->command == 0 && t->data_block == 0 &&
          t->data_end == 0);
}

static void chk_timeout0_connect(const struct config *cfg)
{
    const struct relay_timeouts *t = &cfg->relays[0].timeouts;
    CHECK(t->connect == 10 && t->greeting == 0 && t->command == 0 && t->data_block == 0 &&
          t->data_end == 0);
}

static void chk_timeout500(const struct config *cfg)
{
    const struct relay_timeouts *t = &cfg->relays[0].timeouts;
    CHECK(t->connect == 30 && t->greeting == 300 && t->command == 300 && t->data_block == 180 &&
          t->data_end == 500);
}

static void chk_timeout_explicit(const struct config *cfg)
{
    const struct relay_timeouts *t = &cfg->relays[0].timeouts;
    CHECK(t->connect == 5 && t->greeting == 100 && t->command == 100 && t->data_block == 100 &&
          t->data_end == 900);
}

static void chk_default_b(const struct config *cfg)
{
    CHECK(cfg->nrelays == 3);
    CHECK(cfg->default_relay == 1);
    CHECK_STR(cfg->relays[cfg->default_relay].name, "b");
    CHECK(config_relay(cfg, "c") == &cfg->relays[2]);
    CHECK(cfg->relays[2].line == 4);
    CHECK(cfg->relays[2].options == EXT);
}

static const struct tcase defaults_cases[] = {
    {"minimal config", "relays = { only = { hosts = [\"smtp.example.com\"]; }; };",
     .check = chk_defaults},
    {"explicit values",
     "daemon = { hostname = \"mx.example.org\"; submit_socket = \"/tmp/s.sock\";\n"
     " control_socket = \"/tmp/c.sock\"; spool_dir = \"/srv/spool\"; max_message_size = 1000;\n"
     " max_clients = 5; client_timeout = 7; log_level = \"debug\"; };\n"
     "relays = { r = { hosts = [\"h\"]; mode = \"relay\"; helo_name = \"client.example.org\";\n"
     " pool = { max_connections = 8; min_idle = 2; idle_timeout = 10; keepalive = 0;\n"
     " max_messages = 0; max_age = 0; max_waiters = 5; wait_timeout = 3; }; }; };",
     .check = chk_explicit},
    {"timeout 0 waits indefinitely", R1 " timeout = 0;" R1_END, .check = chk_timeout0},
    {"timeout 0 with an explicit phase", R1 " timeout = 0; timeouts = { connect = 10; };" R1_END,
     .check = chk_timeout0_connect},
    {"timeout above the RFC values", R1 " timeout = 500;" R1_END, .check = chk_timeout500},
    {"explicit phases are not capped",
     R1 " timeout = 100; timeouts = { connect = 5; data_end = 900; };" R1_END,
     .check = chk_timeout_explicit},
    {"default_relay picks a relay",
     "default_relay = \"b\";\nrelays = {\n a = { hosts = [\"h\"]; }; b = { hosts = [\"h\"]; };\n"
     " c = { hosts = [\"h:587\"]; }; };",
     .check = chk_default_b},
};

static void group_defaults(void)
{
    RUN(defaults_cases);
    check_case = "relay_option_name";
    CHECK_STR(relay_option_name(RELAY_OPT_EXTENDED), "extended");
    CHECK_STR(relay_option_name(RELAY_OPT_SECURE), "secure");
    CHECK_STR(relay_option_name(RELAY_OPT_SECURE_IMPLICIT), "secure_implicit");
    CHECK_STR(relay_option_name(RELAY_OPT_TRUSTED_SITE), "trusted_site");
    CHECK_STR(relay_option_name(RELAY_OPT_SECURE_FALLBACK), "secure_fallback");
    CHECK_STR(relay_option_name(RELAY_OPT_PREFER_IPV6), "prefer_ipv6");
    CHECK_STR(relay_option_name(RELAY_OPT_TUNNEL), "tunnel");
    CHECK(relay_option_name(0) == NULL);
    CHECK(relay_option_name(RELAY_OPT_EXTENDED | RELAY_OPT_SECURE) == NULL);
    CHECK(relay_option_name(RELAY_OPT_TUNNEL << 1) == NULL);
    config_free(NULL);
    check_case = NULL;
}

/* ---- config_example ------------------------------------------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int c;
    while ((c = getc(f)) != EOF) {
        if (len + 2 > cap) {
            cap = cap ? cap * 2 : 4096;
            buf = realloc(buf, cap);
            if (!buf)
                abort();
        }
        buf[len++] = (char)c;
    }
    fclose(f);
    if (!buf && !(buf = malloc(1)))
        abort();
    buf[len] = '\0';
    return buf;
}

static int line_of(const char *text, const char *needle)
{
    const char *p = strstr(text, needle);
    int line = 1;
    if (!p)
        return -1;
    for (const char *q = text; q < p; q++)
        line += *q == '\n';
    return line;
}

/*
 * Remove the leading "# " from every line from the one starting with `first`
 * to the next one starting with `last`.  NULL when the block is not there.
 */
static char *uncomment_block(const char *text, const char *first, const char *last)
{
    const char *b = strstr(text, first);
    if (!b || (b != text && b[-1] != '\n'))
        return NULL;
    char *out = malloc(strlen(text) + 1);
    if (!out)
        abort();
    size_t o = (size_t)(b - text);
    memcpy(out, text, o);
    const char *p = b;
    int done = 0;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p + 1) : strlen(p);
        int in_block = !done;
        if (in_block && strncmp(p, last, strlen(last)) == 0)
            done = 1;
        if (in_block && strncmp(p, "# ", 2) == 0) {
            memcpy(out + o, p + 2, len - 2);
            o += len - 2;
        } else {
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
    }
    out[o] = '\0';
    if (!done) {
        free(out);
        return NULL;
    }
    return out;
}

static void group_example(void)
{
    char src[PATH_MAX + 64], path[PATH_MAX + 64], pw[PATH_MAX + 64], err[1024];
    struct stat st;
    snprintf(src, sizeof(src), "%s/etc/mailpool.conf", source_dir);
    snprintf(path, sizeof(path), "%s/example.conf", tmpdir);
    snprintf(pw, sizeof(pw), "%s/pw600", tmpdir);
    char *text = slurp(src);

    /* Hosts without the system CA bundle get a stand-in so only the example is tested. */
    char ca[PATH_MAX + 64];
    snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
    char *t = stat("/etc/ssl/certs/ca-certificates.crt", &st) == 0
                  ? strdup(text)
                  : substitute(text, "/etc/ssl/certs/ca-certificates.crt", ca);

    /* As shipped, the only thing missing is the password file itself. */
    check_case = "example as shipped";
    write_file("example.conf", t, 0644);
    struct config *cfg = config_load(path, err, sizeof(err));
    if (stat("/etc/mailpool/smarthost.pass", &st) < 0) {
        char want[PATH_MAX + 512];
        snprintf(want, sizeof(want),
                 "%s:%d: relay 'smarthost': cannot open password_file "
                 "'/etc/mailpool/smarthost.pass'",
                 path, line_of(t, "password_file = "));
        CHECK(cfg == NULL);
        if (!cfg && strncmp(err, want, strlen(want)) != 0) {
            fprintf(stderr, "[example] got \"%s\", want \"%s...\"\n", err, want);
            check_failures++;
        }
    }
    config_free(cfg);

    char *t2 = substitute(t, "/etc/mailpool/smarthost.pass", pw);
    free(t);
    write_file("example.conf", t2, 0644);
    check_case = "example with a password file";
    cfg = config_load(path, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "[example] does not load: %s\n", err);
        check_failures++;
        free(t2);
        free(text);
        return;
    }
    chk_spool_defaults(cfg);
    CHECK(cfg->nrelays == 2);
    CHECK(cfg->max_message_size == 36700160);
    CHECK(cfg->log_level == LOG_LVL_INFO);
    const struct relay_config *s = config_relay(cfg, "smarthost");
    const struct relay_config *lab = config_relay(cfg, "lab");
    CHECK(s && lab);
    if (s && lab) {
        CHECK(&cfg->relays[cfg->default_relay] == s);
        CHECK(s->options == (EXT | SEC | V6));
        CHECK(s->nhosts == 2 && s->hosts[0].port == 587 && s->hosts[1].port == 587);
        CHECK(s->has_auth);
        CHECK_STR(s->auth_user, "app@example.com");
        CHECK_STR(s->auth_password, FILE_SECRET);
        CHECK(s->mode == MODE_QUEUE);
        CHECK(s->timeout == 60 && s->timeouts.connect == 15 && s->timeouts.data_end == 60);
        CHECK_STR(s->tls_min_version, "1.2");
        CHECK(s->pool.max_connections == 4 && s->pool.min_idle == 1);
        CHECK(lab->options == (EXT | IMPL | TRUST));
        CHECK(lab->nhosts == 1 && lab->hosts[0].port == 2465);
        CHECK_STR(lab->hosts[0].host, "127.0.0.1");
        CHECK(lab->mode == MODE_RELAY);
        CHECK(!lab->has_auth);
        CHECK(lab->timeout == 30 && lab->timeouts.data_end == 30);
        CHECK(lab->pool.max_connections == 2);
    }
    config_free(cfg);

    /* The commented spool block, switched on, must load and state the real defaults. */
    check_case = "example spool block uncommented";
    char *t3 = uncomment_block(t2, "# spool = {", "# };");
    CHECK(t3 != NULL);
    if (t3) {
        CHECK(strstr(t3, "\nspool = {\n") != NULL);
        write_file("example.conf", t3, 0644);
        cfg = config_load(path, err, sizeof(err));
        if (!cfg) {
            fprintf(stderr, "[example spool] does not load: %s\n", err);
            check_failures++;
        } else {
            chk_spool_defaults(cfg);
        }
        config_free(cfg);
        free(t3);
    }
    free(t2);
    free(text);
    check_case = NULL;
}

/* ---- config_syntax -------------------------------------------------------- */

static void chk_include(const struct config *cfg)
{
    CHECK(cfg->relays[0].timeout == 42);
    CHECK(cfg->max_clients == 5);
}

static const struct tcase syntax_cases[] = {
    {"missing bracket", "relays = { r = { hosts = [\"h\" ; }; };", ERR("syntax error", 1)},
    {"error on a later line", "daemon = {\n log_level = \"info\";\n max_clients = = 3;\n};\n",
     ERR("syntax error", 3)},
    {"unterminated string", "relays = {\n r = { hosts = [\"h]; }; };\n", ERR("syntax error", 3)},
    {"stray text", "relays = { r = { hosts = [\"h\"]; }; };\nthis is not a config\n",
     ERR("syntax error", 2)},
    {"duplicate key", "relays = { r = { hosts = [\"h\"];\n hosts = [\"i\"]; }; };",
     ERR("syntax error: duplicate setting name", 2)},
    {"duplicate relay", "relays = {\n r = { hosts = [\"h\"]; };\n r = { hosts = [\"i\"]; }; };",
     ERR("duplicate setting name", 3)},
    {"mixed array", "relays = { r = {\n hosts = [\"h\", 25]; }; };",
     ERR("syntax error: mismatched element type", 2)},
};

static void group_syntax(void)
{
    RUN(syntax_cases);

    /* an included file's errors name that file */
    write_file("inc.conf", "daemon = {\n log_levle = \"info\"; };\n", 0644);
    const struct tcase inc_bad[] = {
        {"error in an included file",
         "@include \"inc.conf\"\nrelays = { r = { hosts = [\"h\"]; }; };",
         ERR("unknown key 'log_levle' in daemon", 2), .errfile = "inc.conf"},
    };
    RUN(inc_bad);
    write_file("inc.conf", "\n\ndaemon = { max_clients = 5000000000; };\n", 0644);
    const struct tcase inc_wide[] = {
        {"wide integer in an included file",
         "@include \"inc.conf\"\nrelays = { r = { hosts = [\"h\"]; }; };", ERR("does not fit", 3),
         .errfile = "inc.conf"},
    };
    RUN(inc_wide);
    write_file("inc.conf", "daemon = { max_clients = 5; };\n", 0644);
    const struct tcase inc_ok[] = {
        {"include", "@include \"inc.conf\"\nrelays = { r = { hosts = [\"h\"]; timeout = 42; }; };",
         .check = chk_include},
    };
    RUN(inc_ok);

    /* files that cannot be read at all */
    char err[512], want[PATH_MAX + 64];
    check_case = "missing file";
    snprintf(want, sizeof(want), "%s/missing.conf", tmpdir);
    CHECK(config_load(want, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, want, strlen(want)) == 0 && strstr(err, ": cannot read: No such file"));
    check_case = "directory";
    CHECK(config_load(tmpdir, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "not a regular file") != NULL);

    /* a buffer too small for the message gets a marked, terminated prefix */
    check_case = "small error buffer";
    write_config("relays = { r = { hosts = [\"h:65536\"]; }; };");
    char small[16];
    memset(small, 'x', sizeof(small));
    CHECK(config_load(conf_path, small, sizeof(small)) == NULL);
    CHECK(small[15] == '\0' && strlen(small) == 15 && strcmp(small + 12, "...") == 0);
    CHECK(config_load(conf_path, NULL, 0) == NULL);
    check_case = NULL;
}

/* ---- config_check --------------------------------------------------------- */

/* Run config_check_main() with stdout and stderr captured into files. */
static int run_check(const char *path, char **out, char **errout)
{
    char o[PATH_MAX + 16], e[PATH_MAX + 16];
    snprintf(o, sizeof(o), "%s/out.txt", tmpdir);
    snprintf(e, sizeof(e), "%s/err.txt", tmpdir);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    int fo = open(o, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int fe = open(e, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (saved_out < 0 || saved_err < 0 || fo < 0 || fe < 0)
        abort();
    dup2(fo, 1);
    dup2(fe, 2);
    int rc = config_check_main(path);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    close(fo);
    close(fe);
    *out = slurp(o);
    *errout = slurp(e);
    return rc;
}

static void group_check(void)
{
    char *out, *err, want[PATH_MAX + 1024];

    check_case = "check ok";
    write_config("default_relay = \"smarthost\";\n"
                 "relays = {\n"
                 " smarthost = { hosts = [\"smtp.example.com:587\", \"[2001:db8::1]\"];\n"
                 "  options = [\"secure\", \"extended\"]; mode = \"queue\";\n"
                 "  auth = { user = \"app@example.com\"; password = \"" INLINE_SECRET "\"; }; };\n"
                 " lab = { hosts = [\"127.0.0.1:465\"]; options = [\"trusted_site\"]; "
                 "mode = \"relay\"; };\n"
                 " plain = { hosts = [\"mx\"]; };\n"
                 "};\n");
    CHECK(run_check(conf_path, &out, &err) == 0);
    snprintf(want, sizeof(want),
             "%s: ok\n"
             "relay smarthost (default): hosts smtp.example.com:587 [2001:db8::1]:25; "
             "options extended secure; auth user app@example.com; mode queue\n"
             "relay lab: hosts 127.0.0.1:465; options secure_implicit trusted_site; no auth; "
             "mode relay\n"
             "relay plain: hosts mx:25; options none; no auth; mode queue\n",
             conf_path);
    CHECK_STR(out, want);
    CHECK_STR(err, "");
    CHECK(!strstr(out, INLINE_SECRET));
    free(out);
    free(err);

    check_case = "check error";
    write_config(
        "relays = { r = {\n hosts = [\"h\"];\n auth = { user = \"u\"; password = \"" INLINE_SECRET
        "\"; }; }; };\n");
    CHECK(run_check(conf_path, &out, &err) == 1);
    CHECK_STR(out, "");
    snprintf(want, sizeof(want), "%s:3: relay 'r': 'auth' needs the 'extended' option", conf_path);
    CHECK(strncmp(err, want, strlen(want)) == 0);
    CHECK(strlen(err) > 0 && err[strlen(err) - 1] == '\n');
    CHECK(!strstr(err, INLINE_SECRET));
    free(out);
    free(err);

    check_case = "check missing file";
    snprintf(want, sizeof(want), "%s/none.conf", tmpdir);
    CHECK(run_check(want, &out, &err) == 1);
    CHECK_STR(out, "");
    CHECK(strstr(err, "none.conf: cannot read") != NULL);
    free(out);
    free(err);
    check_case = NULL;
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"ports", group_ports},
        {"auth", group_auth},
        {"unknown_keys", group_unknown_keys},
        {"types", group_types},
        {"defaults", group_defaults},
        {"example", group_example},
        {"syntax", group_syntax},
        {"check", group_check},
        {"spool", group_spool},
    };
    if (argc > 2)
        source_dir = argv[2];
    setup();
    int rc = unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
    teardown();
    return rc;
}
