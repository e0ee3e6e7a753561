/*
 * arbiterd: command line, config load, start and stop. The only place that
 * exits. Runs in the foreground (systemd, Kubernetes and `make run` all
 * want that); there is no self-daemonizing.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "defaults.h"
#include "log.h"
#include "server.h"

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: arbiterd [-c FILE] [--socket PATH] [--storage DIR]\n"
		"                [-o SECTION.KEY=VALUE ...] [--check-config] "
		"[--help-config]\n"
		"                [--reset-state] [--version]\n"
		"\n"
		"Hold the storage folder's lock and lend access to local "
		"processes as\n"
		"leases over a Unix socket.\n"
		"\n"
		"  -c, --config FILE     config file (default %s if it "
		"exists)\n"
		"  -S, --socket PATH     same as -o socket.path=PATH\n"
		"  -s, --storage DIR     same as -o storage.path=DIR\n"
		"  -o SECTION.KEY=VALUE  override one setting; repeatable, the "
		"last wins\n"
		"      --check-config    validate, print the effective "
		"configuration, exit\n"
		"      --help-config     every key with its default, bounds "
		"and meaning\n"
		"      --reset-state     start even if the state file is "
		"corrupt or from a\n"
		"                        newer version; fencing tokens restart "
		"above any mark\n"
		"                        still readable and above the clock in "
		"microseconds\n"
		"  -V, --version         print the version and exit\n"
		"  -h, --help            this help\n"
		"\n"
		"Precedence: -o and the flags above, then ARBITER_SECTION_KEY "
		"environment\n"
		"variables, then the file. Signals: SIGTERM/SIGINT stop "
		"gracefully,\n"
		"SIGHUP reloads the config.\n",
		ARB_DEFAULT_CONFIG);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"socket", required_argument, NULL, 'S'},
	    {"storage", required_argument, NULL, 's'},
	    {"check-config", no_argument, NULL, 'C'},
	    {"help-config", no_argument, NULL, 'H'},
	    {"reset-state", no_argument, NULL, 'R'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct server srv;
	const char *conf = NULL;
	char **ov = calloc((size_t)argc + 1, sizeof *ov);
	size_t nov = 0;
	bool check = false, reset = false;
	char err[1024];
	int ch, rc;

	if (ov == NULL)
		return 1;
	while ((ch = getopt_long(argc, argv, "c:S:s:o:Vh", longopts, NULL)) !=
	       -1) {
		switch (ch) {
		case 'c':
			conf = optarg;
			break;
		case 'S':
		case 's':
			if (asprintf(&ov[nov], "%s=%s",
				     ch == 'S' ? "socket.path" : "storage.path",
				     optarg) < 0) {
				rc = 1;
				goto out;
			}
			nov++;
			break;
		case 'o':
			if ((ov[nov] = strdup(optarg)) == NULL) {
				rc = 1;
				goto out;
			}
			nov++;
			break;
		case 'C':
			check = true;
			break;
		case 'R':
			reset = true;
			break;
		case 'H':
			config_help(stdout);
			rc = 0;
			goto out;
		case 'V':
			printf("arbiterd %s (protocol %d)\n", ARBITER_VERSION,
			       ARB_PROTOCOL_VERSION);
			rc = 0;
			goto out;
		case 'h':
			usage(stdout);
			rc = 0;
			goto out;
		default:
			usage(stderr);
			rc = 2;
			goto out;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "arbiterd: unexpected argument '%s'\n",
			argv[optind]);
		usage(stderr);
		rc = 2;
		goto out;
	}
	if (conf == NULL && access(ARB_DEFAULT_CONFIG, F_OK) == 0)
		conf = ARB_DEFAULT_CONFIG;

	memset(&srv, 0, sizeof srv);
	if (config_load(&srv.cfg, conf, ov, nov, err, sizeof err) < 0) {
		fprintf(stderr, "arbiterd: %s\n", err);
		rc = 2;
		goto out;
	}
	if (check) {
		config_print(&srv.cfg, stdout);
		config_free(&srv.cfg);
		rc = 0;
		goto out;
	}
	srv.conf_path = conf;
	srv.reset_state = reset;
	srv.overrides = ov;
	srv.noverrides = nov;
	log_setup((enum log_level)srv.cfg.log_level,
		  srv.cfg.log_format == LOGJSON);
	log_hook_libevent();

	if (server_init(&srv, err, sizeof err) < 0) {
		log_error("cannot start", "error=\"%s\"", err);
		fprintf(stderr, "arbiterd: %s\n", err);
		server_free(&srv);
		rc = 1;
	} else {
		rc = server_run(&srv);
		server_free(&srv);
		log_info("stopped", "exit=%d", rc);
	}
out:
	for (size_t i = 0; i < nov; i++)
		free(ov[i]);
	free(ov);
	return rc;
}
