/*
 * Unit tests for the storage lock (arbiter/storage.c): what is refused at
 * the lock path and how it is named, permission errors that say what to do,
 * the lock file's mode and group, the holder record, and the wait for a
 * lock whose file is replaced meanwhile. Two struct storage in one process
 * are two arbiters: OFD locks conflict between open file descriptions.
 * Cases that need another uid run in a child made with fork() + setuid().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child_exit.h"
#include "storage.h"

#define NOBODY 65534

static char dir[64];
static char lock[128];
static char err[2048];

static void
setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/arb-storage-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	/* Reachable by the child that switches to another uid. */
	chmod(dir, 0755);
	snprintf(lock, sizeof lock, "%s/arbiter.lock", dir);
	err[0] = '\0';
}

static void
teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	(void)!system(cmd);
}

TestSuite(storage, .init = setup, .fini = teardown);

static int
try_lock(struct storage *s)
{
	return storage_try_lock(s, dir, lock, "/run/test.sock", err,
				sizeof err);
}

/*
 * Run storage_try_lock as another uid (root) or as ourselves (non-root) in
 * a child; returns its rc and leaves its err (and note) in out.
 */
static int
try_lock_as_other(const char *lock_path, char *out, size_t outlen,
		  bool as_nobody)
{
	int p[2];
	pid_t pid;
	int rc = 0, status;
	ssize_t n;

	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct storage s;
		char e[2048] = "";
		int r;

		close(p[0]);
		if (as_nobody && drop_uid(NOBODY) < 0)
			child_exit(99);
		storage_init(&s);
		r = storage_try_lock(&s, dir, lock_path, "-", e, sizeof e);
		dprintf(p[1], "%d\n%s\n%s", r, e, s.note);
		storage_free(&s);
		child_exit(0);
	}
	close(p[1]);
	n = read(p[0], out, outlen - 1);
	close(p[0]);
	out[n > 0 ? n : 0] = '\0';
	waitpid(pid, &status, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child status %d", status);
	sscanf(out, "%d", &rc);
	return rc;
}

Test(storage, a_socket_at_the_lock_path_is_refused_and_named)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	struct storage s;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	cr_assert_lt(strlen(lock), sizeof a.sun_path);
	memcpy(a.sun_path, lock, strlen(lock) + 1);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	storage_init(&s);
	cr_assert_lt(try_lock(&s), 0);
	cr_assert_not_null(strstr(err, "is a socket, not a regular file; "
				       "remove it"),
			   "%s", err);
	cr_assert_not_null(strstr(err, lock));
	storage_free(&s);
	close(fd);
}

Test(storage, a_device_at_the_lock_path_is_refused_and_named)
{
	struct storage s;

	if (mknod(lock, S_IFCHR | 0600, makedev(1, 3)) < 0)
		cr_skip("making a device node needs root (CAP_MKNOD)");
	storage_init(&s);
	cr_assert_eq(try_lock(&s), -EINVAL);
	cr_assert_not_null(strstr(err, "is a device, not a regular file"), "%s",
			   err);
	storage_free(&s);
}

Test(storage, a_storage_folder_that_cannot_be_made_is_named)
{
	struct storage s;
	char file[160], sub[200];

	snprintf(file, sizeof file, "%s/plain", dir);
	close(open(file, O_CREAT | O_WRONLY, 0600));
	snprintf(sub, sizeof sub, "%s/inner", file);
	storage_init(&s);
	cr_assert_eq(storage_try_lock(&s, sub, lock, "-", err, sizeof err),
		     -ENOTDIR);
	cr_assert_not_null(strstr(err, "cannot create storage folder"), "%s",
			   err);
	cr_assert_not_null(strstr(err, file), "%s", err);
	storage_free(&s);
}

Test(storage, a_lock_file_of_another_user_names_owner_mode_and_the_remedy)
{
	char out[2048];
	int rc;

	close(open(lock, O_CREAT | O_WRONLY, 0600));
	if (getuid() == 0) {
		rc = try_lock_as_other(lock, out, sizeof out, true);
	} else {
		/* Our own file without any permission is refused alike. */
		chmod(lock, 0);
		rc = try_lock_as_other(lock, out, sizeof out, false);
	}
	cr_assert_eq(rc, -EACCES, "%s", out);
	cr_assert_not_null(strstr(out, "cannot open storage lock file"), "%s",
			   out);
	cr_assert_not_null(strstr(out, "Permission denied (it belongs to uid"),
			   "%s", out);
	cr_assert_not_null(
	    strstr(out, "set storage.group to a group they share"), "%s", out);
}

Test(storage, a_folder_the_daemon_cannot_write_is_named_with_its_uid)
{
	char out[2048];
	int rc;

	if (getuid() == 0) {
		rc = try_lock_as_other(lock, out, sizeof out, true);
	} else {
		chmod(dir, 0555);
		rc = try_lock_as_other(lock, out, sizeof out, false);
		chmod(dir, 0755);
	}
	cr_assert_eq(rc, -EACCES, "%s", out);
	cr_assert_not_null(strstr(out, "cannot create storage lock file"), "%s",
			   out);
	cr_assert_not_null(strstr(out, "write access to its folder"), "%s",
			   out);
}

Test(storage, an_open_lock_file_not_ours_to_fix_is_reported_with_the_command)
{
	char out[2048];

	if (getuid() != 0)
		cr_skip("a lock file owned by another uid needs root to make");
	close(open(lock, O_CREAT | O_WRONLY, 0600));
	chmod(lock, 0666);
	cr_assert_eq(try_lock_as_other(lock, out, sizeof out, true), 0, "%s",
		     out);
	cr_assert_not_null(strstr(out, "has mode 0666 and belongs to uid 0, so "
				       "this daemon (uid 65534) cannot fix it"),
			   "%s", out);
	cr_assert_not_null(strstr(out, "run: chmod 600 "), "%s", out);
}

Test(storage, a_lock_file_of_the_wrong_group_is_given_to_storage_group)
{
	struct storage s;
	struct stat st;

	close(open(lock, O_CREAT | O_WRONLY, 0640));
	storage_init(&s);
	/* A group the file does not have (and, as non-root, we are not in). */
	s.gid = getgid() == 0 ? NOBODY : 0;
	cr_assert_eq(try_lock(&s), 0, "%s", err);
	if (getuid() == 0) {
		cr_assert_not_null(strstr(s.note, "group 0 -> 65534"), "%s",
				   s.note);
		cr_assert_not_null(strstr(s.note, "and storage.group may open"),
				   "%s", s.note);
		cr_assert_eq(stat(lock, &st), 0);
		cr_assert_eq(st.st_gid, (gid_t)NOBODY);
	} else {
		cr_assert_not_null(strstr(s.note,
					  "(storage.group): Operation not "
					  "permitted; the daemon's user "
					  "must be a member"),
				   "%s", s.note);
	}
	storage_free(&s);
}

Test(storage, a_relative_lock_path_checks_the_current_folder)
{
	struct storage s;
	char cwd[4096];

	cr_assert_not_null(getcwd(cwd, sizeof cwd));
	chmod(dir, 0777);
	cr_assert_eq(chdir(dir), 0);
	storage_init(&s);
	cr_assert_eq(
	    storage_try_lock(&s, "", "arbiter.lock", "-", err, sizeof err), 0,
	    "%s", err);
	cr_assert_not_null(strstr(s.note,
				  "storage folder . is writable by every "
				  "user (mode 0777)"),
			   "%s", s.note);
	storage_free(&s);
	cr_assert_eq(chdir(cwd), 0);
}

Test(storage, the_holder_record_is_one_line_or_says_why_not)
{
	char buf[64];
	int fd;

	cr_assert_eq(storage_read_holder(lock, buf, sizeof buf), -ENOENT);
	cr_assert_eq(storage_read_holder(dir, buf, sizeof buf), -EINVAL);
	fd = open(lock, O_CREAT | O_WRONLY, 0600);
	cr_assert_eq(storage_read_holder(lock, buf, sizeof buf), -ENODATA);
	cr_assert_eq(write(fd, "pid=1\nhost=\ta\n\n", 15), 15);
	close(fd);
	cr_assert_eq(storage_read_holder(lock, buf, sizeof buf), 0);
	cr_assert_str_eq(buf, "pid=1 host= a");
}

Test(storage, a_second_arbiter_is_told_who_holds_the_lock)
{
	struct storage a, b;

	storage_init(&a);
	storage_init(&b);
	cr_assert_eq(try_lock(&a), 0, "%s", err);
	cr_assert_eq(try_lock(&b), -EAGAIN);
	cr_assert_not_null(strstr(err, "is locked by another arbiter (pid="),
			   "%s", err);
	cr_assert_not_null(strstr(err, "socket=/run/test.sock"), "%s", err);
	/* A holder that left no record. */
	cr_assert_eq(truncate(lock, 0), 0);
	cr_assert_eq(try_lock(&b), -EAGAIN);
	cr_assert_not_null(strstr(err, "a process that left no record"), "%s",
			   err);
	storage_free(&b);
	storage_free(&a);
}

Test(storage, waiting_needs_an_open_lock_file)
{
	struct storage s;

	storage_init(&s);
	cr_assert_eq(storage_wait_start(&s), -EBADF);
	cr_assert_eq(storage_wait_done(&s), -EINVAL);
	cr_assert_eq(try_lock(&s), 0, "%s", err);
	cr_assert_eq(storage_wait_done(&s), 0, "held: nothing to wait for");
	storage_free(&s);
}

static void
wait_woken(struct storage *s)
{
	struct pollfd p = {.fd = s->wake_fd, .events = POLLIN};

	cr_assert_eq(poll(&p, 1, 20000), 1, "the wait thread never woke");
}

Test(storage, a_wait_on_a_lock_file_removed_meanwhile_ends_stale)
{
	struct storage a, b;

	storage_init(&a);
	storage_init(&b);
	cr_assert_eq(try_lock(&a), 0, "%s", err);
	cr_assert_eq(try_lock(&b), -EAGAIN);
	cr_assert_eq(storage_wait_start(&b), 0);
	cr_assert_eq(storage_wait_start(&b), 0, "a second start is a no-op");
	cr_assert_eq(unlink(lock), 0);
	storage_unlock(&a);
	wait_woken(&b);
	cr_assert_eq(storage_wait_done(&b), -ESTALE);
	cr_assert_eq(b.fd, -1);
	cr_assert_eq(try_lock(&b), 0, "%s", err);
	storage_free(&b);
	storage_free(&a);
}

Test(storage, a_wait_that_gets_the_lock_writes_the_holder_record)
{
	struct storage a, b;
	char rec[256];

	storage_init(&a);
	storage_init(&b);
	cr_assert_eq(try_lock(&a), 0, "%s", err);
	cr_assert_eq(try_lock(&b), -EAGAIN);
	cr_assert_eq(storage_wait_start(&b), 0);
	storage_unlock(&a);
	wait_woken(&b);
	cr_assert_eq(storage_wait_done(&b), 0);
	cr_assert(b.held);
	cr_assert_not(b.prev_record, "a clean unlock leaves no record");
	cr_assert_eq(storage_read_holder(lock, rec, sizeof rec), 0);
	cr_assert_not_null(strstr(rec, "socket=/run/test.sock"), "%s", rec);
	storage_free(&b);
	storage_free(&a);
}

Test(storage, a_replaced_lock_file_that_another_arbiter_holds_is_reported)
{
	struct storage a, b;

	storage_init(&a);
	storage_init(&b);
	cr_assert_eq(try_lock(&a), 0, "%s", err);
	cr_assert_gt(storage_watch(&a), 0);
	cr_assert_eq(storage_check(&a, err, sizeof err), 0, "unchanged");
	cr_assert_eq(unlink(lock), 0);
	cr_assert_eq(try_lock(&b), 0, "%s", err);
	cr_assert_eq(storage_check(&a, err, sizeof err), -EAGAIN);
	cr_assert_not_null(strstr(err,
				  "was removed or replaced, and the new one "
				  "cannot be locked: storage"),
			   "%s", err);
	storage_free(&b);
	cr_assert_eq(storage_check(&a, err, sizeof err), 0,
		     "no longer held: nothing to check");
	storage_free(&a);
}

Test(storage, the_folder_watch_needs_a_folder_that_exists)
{
	struct storage s;

	storage_init(&s);
	cr_assert_eq(storage_watch_dir(&s), -EINVAL, "no lock path yet");
	cr_assert_not(storage_dir_changed(&s));
	cr_assert_eq(try_lock(&s), 0, "%s", err);
	cr_assert_gt(storage_watch_dir(&s), 0);
	cr_assert_not(storage_dir_changed(&s));
	close(open(lock, O_RDONLY));
	chmod(lock, 0600);
	cr_assert(storage_dir_changed(&s), "a change to the lock file is seen");
	storage_unwatch_dir(&s);
	free(s.lock_path);
	s.lock_path = strdup("/nonexistent-arb/arbiter.lock");
	cr_assert_eq(storage_watch_dir(&s), -ENOENT);
	cr_assert_eq(s.dir_watch_fd, -1);
	storage_free(&s);
}

Test(storage, a_stuck_wait_behind_a_reader_is_only_on_a_replaced_file)
{
	struct storage a, b;

	storage_init(&a);
	storage_init(&b);
	cr_assert_not(storage_stuck_behind_reader(&b), "not waiting");
	cr_assert_eq(try_lock(&a), 0, "%s", err);
	cr_assert_eq(try_lock(&b), -EAGAIN);
	cr_assert_eq(storage_wait_start(&b), 0);
	cr_assert_not(storage_stuck_behind_reader(&b),
		      "the file is still the one at the path");
	storage_wait_cancel(&b);
	cr_assert_eq(b.fd, -1);
	cr_assert_not(b.held);
	storage_free(&b);
	storage_free(&a);
}

/*
 * Run storage_try_lock with storage.group = gid in a folder of our own:
 * as root in a child that became nobody (who is in no group 0), else
 * here. Leaves the note in out; returns the rc.
 */
static int
try_lock_with_foreign_group(bool existing, char *out, size_t outlen)
{
	char sub[128], path[160];
	int p[2], status, rc = 1;
	pid_t pid;
	ssize_t n;

	snprintf(sub, sizeof sub, "%s/own", dir);
	cr_assert_eq(mkdir(sub, 0755), 0);
	snprintf(path, sizeof path, "%s/arbiter.lock", sub);
	if (getuid() == 0)
		cr_assert_eq(chown(sub, NOBODY, NOBODY), 0);
	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct storage s;
		char e[2048] = "";
		int r;

		close(p[0]);
		if (getuid() == 0 && drop_uid(NOBODY) < 0)
			child_exit(99);
		if (existing)
			close(open(path, O_CREAT | O_WRONLY, 0640));
		storage_init(&s);
		/* Not our group, and one we are not a member of. */
		s.gid = getgid() == 0 ? 1 : 0;
		r = storage_try_lock(&s, sub, path, "-", e, sizeof e);
		dprintf(p[1], "%d\n%s\n%s", r, e, s.note);
		storage_free(&s);
		child_exit(0);
	}
	close(p[1]);
	n = read(p[0], out, outlen - 1);
	close(p[0]);
	out[n > 0 ? n : 0] = '\0';
	waitpid(pid, &status, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d",
		  status);
	sscanf(out, "%d", &rc);
	return rc;
}

Test(storage, an_existing_lock_file_that_cannot_get_storage_group_says_why)
{
	char out[2048];

	cr_assert_eq(try_lock_with_foreign_group(true, out, sizeof out), 0,
		     "%s", out);
	cr_assert_not_null(strstr(out, "(storage.group): Operation not "
				       "permitted; the daemon's user must be a "
				       "member of that group"),
			   "%s", out);
}

Test(storage, a_new_lock_file_that_cannot_get_storage_group_says_why)
{
	char out[2048];

	cr_assert_eq(try_lock_with_foreign_group(false, out, sizeof out), 0,
		     "%s", out);
	cr_assert_not_null(strstr(out, "cannot give storage lock file"), "%s",
			   out);
	cr_assert_not_null(strstr(out, "Operation not permitted"), "%s", out);
}

Test(storage, a_retry_after_the_lock_file_was_replaced_locks_the_new_one)
{
	struct storage a, b;

	storage_init(&a);
	storage_init(&b);
	cr_assert_eq(try_lock(&a), 0, "%s", err);
	cr_assert_eq(try_lock(&b), -EAGAIN);
	cr_assert_geq(b.fd, 0, "the standby keeps the file open");
	/* The old file goes away; a still holds its lock, which protects
	 * nothing now. */
	cr_assert_eq(unlink(lock), 0);
	cr_assert_eq(try_lock(&b), 0, "%s", err);
	cr_assert(b.held);
	storage_free(&b);
	storage_free(&a);
}

Test(storage, watching_a_lock_file_that_is_gone_fails)
{
	struct storage s;

	storage_init(&s);
	storage_wait_cancel(&s); /* not waiting: nothing to do */
	cr_assert_eq(try_lock(&s), 0, "%s", err);
	cr_assert_eq(unlink(lock), 0);
	cr_assert_eq(storage_watch(&s), -ENOENT);
	storage_free(&s);
}
