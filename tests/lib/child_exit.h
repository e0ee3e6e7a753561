/*
 * child_exit(): _exit() for a child a unit test forked, which first writes
 * the child's gcov counters in a coverage build (elsewhere the weak symbols
 * are absent and it is a plain _exit). A child ending in _exit() would
 * otherwise lose them: libgcov writes its data from an exit handler.
 *
 * __gcov_dump is pulled from libgcov only when something references it
 * strongly, so its weak reference is usually null; __gcov_dump_one and
 * __gcov_root sit in the member every instrumented object needs, with the
 * signature libgcov has had since GCC 5.
 *
 * A child that switched uid with drop_uid() (root kept as the saved uid)
 * returns to root first, so it may write the build's counter files.
 */
#ifndef ARBITER_TEST_CHILD_EXIT_H
#define ARBITER_TEST_CHILD_EXIT_H

#include <sys/types.h>
#include <grp.h>
#include <unistd.h>

extern void __gcov_dump(void) __attribute__((weak));
extern void __gcov_dump_one(void *root) __attribute__((weak));
extern char __gcov_root[] __attribute__((weak));

/* Become uid (and its gid) for every check the kernel makes, keeping root
 * as the saved uid. Only root may call it. */
static inline int
drop_uid(uid_t uid)
{
	if (setgroups(0, NULL) < 0 || setresgid(uid, uid, 0) < 0 ||
	    setresuid(uid, uid, 0) < 0)
		return -1;
	return 0;
}

static inline void __attribute__((noreturn)) child_exit(int status)
{
	uid_t r, e, s;

	if (getresuid(&r, &e, &s) == 0 && e != 0 && s == 0) {
		(void)!setresuid(0, 0, 0);
		(void)!setresgid(0, 0, 0);
	}
	if (__gcov_dump != NULL)
		__gcov_dump();
	else if (__gcov_dump_one != NULL && __gcov_root != NULL)
		__gcov_dump_one(__gcov_root);
	_exit(status);
}

#endif
