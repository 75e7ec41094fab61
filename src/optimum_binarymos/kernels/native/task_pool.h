/*
 * A small pool of helper threads for the native kernels, in which the caller never waits for a helper that
 * has not started.
 *
 * Why not OpenMP: a parallel region ends with a barrier that waits for every thread of the team, and idle
 * OpenMP threads spin before they sleep. On a machine shared with other jobs, a packed layer's call (well
 * under a millisecond) then waits for a descheduled thread, or loses its core to a spinning one: on two busy
 * cores, a packed model decoded about 3.5 times slower with 2 OpenMP threads than with 1.
 *
 * Here the caller publishes a job of numbered tasks and claims tasks itself at once; helpers sleep on a
 * condition variable (no spinning) and claim whatever tasks are left when they wake. Once every task has
 * been claimed the caller closes the job, so a helper that wakes later finds nothing to join; the caller then
 * waits only for helpers that joined, which are running tasks. After fork() the child has no helpers: the
 * caller runs every task, which stays correct.
 */
#ifndef BINARYMOS_TASK_POOL_H
#define BINARYMOS_TASK_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#define POOL_MAX_HELPERS 63

typedef void (*pool_task_fn)(const void* context, int64_t task);

typedef struct {
    pool_task_fn fn;
    const void* context;
    int64_t tasks;
    atomic_llong next;   /* next task to claim */
    atomic_int inside;   /* helpers that joined and have not left */
} pool_job;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;
/* One caller at a time publishes a job; a concurrent caller runs its tasks alone. */
static pthread_mutex_t pool_caller = PTHREAD_MUTEX_INITIALIZER;
static pool_job* pool_open_job = NULL; /* guarded by pool_lock */
static unsigned long pool_generation = 0; /* guarded by pool_lock; bumped when a job opens */
static int pool_seats = 0;                /* guarded by pool_lock; helpers still allowed to join the job */
static int pool_helpers = 0;              /* guarded by pool_lock; helpers started */

static void pool_claim_tasks(pool_job* job) {
    for (;;) {
        const int64_t task = atomic_fetch_add(&job->next, 1);
        if (task >= job->tasks) return;
        job->fn(job->context, task);
    }
}

static void* pool_helper_main(void* unused) {
    (void)unused;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        while (pool_open_job == NULL || pool_generation == seen || pool_seats == 0) {
            if (pool_generation != seen && pool_open_job == NULL) seen = pool_generation;
            pthread_cond_wait(&pool_wake, &pool_lock);
        }
        seen = pool_generation;
        pool_seats--;
        pool_job* job = pool_open_job;
        atomic_fetch_add(&job->inside, 1);
        pthread_mutex_unlock(&pool_lock);
        pool_claim_tasks(job);
        atomic_fetch_sub(&job->inside, 1); /* the job may be gone after this */
        pthread_mutex_lock(&pool_lock);
    }
    return NULL;
}

/* Start helpers up to `wanted` (guarded by pool_lock); returns how many exist. */
static int pool_start_helpers(int wanted) {
    if (wanted > POOL_MAX_HELPERS) wanted = POOL_MAX_HELPERS;
    while (pool_helpers < wanted) {
        pthread_t thread;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attributes, pool_helper_main, NULL);
        pthread_attr_destroy(&attributes);
        if (failed) break;
        pool_helpers++;
    }
    return pool_helpers;
}

/* Run fn(context, t) for t in [0, tasks) on the caller and up to threads - 1 helpers. */
static void pool_run(pool_task_fn fn, const void* context, int64_t tasks, int threads) {
    pool_job job = {fn, context, tasks, 0, 0};
    if (threads <= 1 || tasks <= 1 || pthread_mutex_trylock(&pool_caller) != 0) {
        pool_claim_tasks(&job);
        return;
    }
    pthread_mutex_lock(&pool_lock);
    const int helpers = pool_start_helpers(threads - 1);
    pool_open_job = &job;
    pool_seats = helpers < threads - 1 ? helpers : threads - 1;
    pool_generation++;
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_lock);

    pool_claim_tasks(&job);

    pthread_mutex_lock(&pool_lock);
    pool_open_job = NULL; /* every task is claimed: helpers that wake from now on do not join */
    pool_seats = 0;
    pthread_mutex_unlock(&pool_lock);
    while (atomic_load(&job.inside) != 0) sched_yield(); /* helpers inside are finishing claimed tasks */
    pthread_mutex_unlock(&pool_caller);
}

#endif
