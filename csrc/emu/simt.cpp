// The SIMT executor of the emulated CUDA build: runs a kernel launch's blocks on one host
// thread, each CUDA thread a fiber with its own stack (an x86-64 context switch of six
// registers; no syscalls, so barriers and shuffles cost nanoseconds).
//
// Semantics, as strict as the hardware's contract rather than as forgiving as one GPU:
// - A block's threads run between synchronisation points in a seeded order that changes at
//   every sweep: forward, reverse or shuffled. A missing __syncthreads() or a shared-memory race
//   then gives a wrong or run-to-run different result.
// - __syncthreads() completes when every thread of the block has reached it, at the same call
//   site. A thread that exits while others wait, or threads waiting at different barriers,
//   is an error naming the kernel (undefined behaviour on a GPU).
// - __shfl_xor_sync(mask, v, o): the caller must be in mask, every lane in mask must call it
//   (with the same mask, at the same site) and must not have exited, and the source lane must
//   be in mask; a source lane past the warp reads the caller's own value (PTX shfl.bfly).
// - Dynamic shared memory sits against a guard page and is poisoned (0xff bytes: NaN floats)
//   at every block start; device memory has guard pages (runtime.cpp). An access that faults
//   is reported with the kernel, block and thread, and the launch fails with
//   cudaErrorIllegalAddress, as a GPU's would.
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"

#if !defined(__x86_64__)
#error "the SIMT emulator's context switch is written for x86-64"
#endif

// rotary_emu_switch(save, to): save the callee-saved registers and the stack pointer into
// *save, continue on the stack `to`. rotary_emu_start: a fresh fiber's first frame, calling
// r13(r12) with the stack 16-byte aligned.
extern "C" void rotary_emu_switch(void **save, void *to);
extern "C" void rotary_emu_start();
asm(R"(
    .text
    .p2align 4
    .globl rotary_emu_switch
    .hidden rotary_emu_switch
    .type rotary_emu_switch, @function
rotary_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rotary_emu_switch, .-rotary_emu_switch
    .p2align 4
    .globl rotary_emu_start
    .hidden rotary_emu_start
    .type rotary_emu_start, @function
rotary_emu_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size rotary_emu_start, .-rotary_emu_start
)");

namespace rotary_emu {

thread_local const ThreadCtx *tl_ctx = nullptr;

namespace {

const size_t PAGE = 4096;
const size_t STACK_BYTES = 128 * 1024;
const int MAX_THREADS = 1024;
const size_t MAX_DYNAMIC_SMEM = 48 * 1024;
const int WARP = 32;

enum class State { Runnable, AtBarrier, AtShuffle, Done };

struct Fiber {
    void *sp = nullptr;
    char *stack_top = nullptr;
    ThreadCtx ctx{};
    State state = State::Done;
    const char *site = nullptr;
    int index = 0;  // linear thread index in the block
    uint64_t shfl_value = 0;
    unsigned shfl_mask = 0;
    int shfl_lane_mask = 0;
};

struct Warp {
    unsigned arrived = 0;  // lanes waiting at the pending shuffle
    unsigned mask = 0;
    const char *site = nullptr;
    unsigned exited = 0;
};

uint64_t splitmix(uint64_t &s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// One per host thread that runs kernels (each stream's worker).
struct Executor {
    std::vector<Fiber> fibers;
    std::vector<int> order;
    Warp warps[MAX_THREADS / WARP];
    void *sched_sp = nullptr;
    char *smem = nullptr;  // MAX_DYNAMIC_SMEM bytes ending at a guard page
    char *sigstack = nullptr;

    const Launch *launch = nullptr;
    uint3 block_idx{};
    int n_threads = 0, exited = 0, at_barrier = 0;
    int pos = 0;               // next index into `order` in this sweep
    bool ran_in_sweep = false;
    uint64_t rng = 0;
    bool failed = false;
    cudaError_t error = cudaSuccess;
    std::string message;
    Fiber *current = nullptr;
    bool in_kernel = false;
    sigjmp_buf fault_jump;

    Executor() {
        fibers.resize(MAX_THREADS);
        const size_t smem_map = MAX_DYNAMIC_SMEM + 2 * PAGE;
        char *m = static_cast<char *>(mmap(nullptr, smem_map, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (m == MAP_FAILED) abort();
        mprotect(m + PAGE, MAX_DYNAMIC_SMEM, PROT_READ | PROT_WRITE);
        smem = m + PAGE;
        const size_t sig_bytes = 64 * 1024;
        sigstack = static_cast<char *>(malloc(sig_bytes));
        stack_t ss{};
        ss.ss_sp = sigstack;
        ss.ss_size = sig_bytes;
        sigaltstack(&ss, nullptr);
    }

    void ensure_stacks(int n) {
        for (int i = 0; i < n; ++i) {
            if (fibers[i].stack_top) continue;
            char *m = static_cast<char *>(mmap(nullptr, STACK_BYTES + PAGE, PROT_NONE,
                                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
            if (m == MAP_FAILED) abort();
            mprotect(m + PAGE, STACK_BYTES, PROT_READ | PROT_WRITE);  // guard page below
            fibers[i].stack_top = m + PAGE + STACK_BYTES;
        }
    }

    std::string where(const Fiber *f) const {
        char buf[160];
        snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", block_idx.x, block_idx.y,
                 block_idx.z, f->ctx.thread_idx.x, f->ctx.thread_idx.y, f->ctx.thread_idx.z);
        return buf;
    }

    // Record the first error of the launch.
    void fail(cudaError_t code, const std::string &what) {
        if (failed) return;
        failed = true;
        error = code;
        message = std::string("kernel ") + launch->name + ": " + what;
    }

    // From a fiber: run the next runnable thread (or return to the scheduler when the block is
    // done or failed). Switches straight from fiber to fiber; the calling thread continues at
    // once if it is the next runnable one.
    void yield() {
        Fiber *f = current;
        Fiber *next = pick_next();
        if (next == f) return;
        current = next;
        tl_ctx = next ? &next->ctx : nullptr;
        rotary_emu_switch(&f->sp, next ? next->sp : sched_sp);
    }

    // The next runnable thread in this sweep's order; a new sweep (a new order drawn from the
    // seed) when this one is done; null when the block finished, failed or deadlocked.
    Fiber *pick_next() {
        for (;;) {
            while (pos < n_threads && !failed) {
                Fiber &f = fibers[order[pos++]];
                if (f.state == State::Runnable) {
                    ran_in_sweep = true;
                    return &f;
                }
            }
            if (failed || exited == n_threads) return nullptr;
            if (!ran_in_sweep) {
                fail(cudaErrorLaunchFailure, deadlock());
                return nullptr;
            }
            new_order();
        }
    }

    void new_order() {
        pos = 0;
        ran_in_sweep = false;
        const uint64_t r = splitmix(rng);
        switch (r % 3) {
        case 0:
            for (int i = 0; i < n_threads; ++i) order[i] = i;
            break;
        case 1:
            for (int i = 0; i < n_threads; ++i) order[i] = n_threads - 1 - i;
            break;
        default:
            for (int i = 0; i < n_threads; ++i) order[i] = i;
            for (int i = n_threads - 1; i > 0; --i) {
                const int j = static_cast<int>(splitmix(rng) % static_cast<uint64_t>(i + 1));
                std::swap(order[i], order[j]);
            }
        }
    }

    char *dynamic_base() const {
        return smem + MAX_DYNAMIC_SMEM - ((launch->dynamic_smem + 15) & ~size_t(15));
    }

    bool stack_fault(uintptr_t addr) const {
        for (const Fiber &f : fibers) {
            if (!f.stack_top) break;
            const uintptr_t guard = reinterpret_cast<uintptr_t>(f.stack_top) - STACK_BYTES - PAGE;
            if (addr >= guard && addr < guard + PAGE) return true;
        }
        return false;
    }

    void run_block(uint3 bidx);
    void schedule();
    void on_exit(Fiber *f);
    const char *barrier_site() const;
    std::string deadlock() const;
};

thread_local Executor *tl_exec = nullptr;

Executor &executor() {
    if (!tl_exec) tl_exec = new Executor();
    return *tl_exec;
}

void fiber_main(void *arg) {
    Fiber *f = static_cast<Fiber *>(arg);
    Executor &ex = *tl_exec;
    ex.launch->run(ex.launch->args);
    ex.on_exit(f);
    ex.yield();  // never resumed
    abort();
}

void Executor::on_exit(Fiber *f) {
    f->state = State::Done;
    exited++;
    Warp &w = warps[f->index / WARP];
    const unsigned bit = 1u << (f->index % WARP);
    w.exited |= bit;
    if (at_barrier > 0) {
        fail(cudaErrorLaunchFailure, where(f) + " returned while " + std::to_string(at_barrier) +
                                         " thread(s) of its block wait at __syncthreads() (" +
                                         barrier_site() + ")");
    } else if (w.arrived != 0 && (w.mask & bit)) {
        fail(cudaErrorLaunchFailure, where(f) + " returned while lanes of its warp wait for it at " +
                                         "__shfl_xor_sync (" + w.site + ")");
    }
}

const char *Executor::barrier_site() const {
    for (int i = 0; i < n_threads; ++i) {
        if (fibers[i].state == State::AtBarrier) return fibers[i].site;
    }
    return "?";
}

void Executor::run_block(uint3 bidx) {
    block_idx = bidx;
    const dim3 b = launch->block;
    n_threads = static_cast<int>(b.x * b.y * b.z);
    exited = 0;
    at_barrier = 0;
    for (int w = 0; w < (n_threads + WARP - 1) / WARP; ++w) warps[w] = Warp{};
    if (launch->dynamic_smem) memset(dynamic_base(), 0xff, launch->dynamic_smem);
    for (int i = 0; i < n_threads; ++i) {
        Fiber &f = fibers[i];
        f.index = i;
        f.ctx.thread_idx = {i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
        f.ctx.block_idx = bidx;
        f.ctx.block_dim = {b.x, b.y, b.z};
        f.ctx.grid_dim = {launch->grid.x, launch->grid.y, launch->grid.z};
        f.state = State::Runnable;
        f.site = nullptr;
        // The first frame rotary_emu_switch pops: r15 r14 r13=entry r12=arg rbx rbp, then
        // returns into rotary_emu_start with the stack 16-byte aligned for its call.
        void **s = reinterpret_cast<void **>(f.stack_top - 72);
        s[0] = nullptr;
        s[1] = nullptr;
        s[2] = reinterpret_cast<void *>(&fiber_main);
        s[3] = &f;
        s[4] = nullptr;
        s[5] = nullptr;
        s[6] = reinterpret_cast<void *>(&rotary_emu_start);
        f.sp = s;
    }
    schedule();
}

// Runs the block's threads in sweeps, each thread until it synchronises or returns; the
// order of every sweep is drawn from the launch's seed (fibers switch among themselves and
// come back here when the block is done).
void Executor::schedule() {
    order.resize(n_threads);
    new_order();
    current = pick_next();
    if (current) {
        tl_ctx = &current->ctx;
        rotary_emu_switch(&sched_sp, current->sp);
    }
    current = nullptr;
    tl_ctx = nullptr;
    if (!failed && exited != n_threads) fail(cudaErrorLaunchFailure, deadlock());
}

// No thread can run: describe where they wait.
std::string Executor::deadlock() const {
    std::string s = "block (" + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) + "," +
                    std::to_string(block_idx.z) + ") deadlocks (divergent synchronisation):";
    int shown = 0;
    for (int i = 0; i < n_threads && shown < 4; ++i) {
        const Fiber &f = fibers[i];
        if (f.state == State::AtBarrier || f.state == State::AtShuffle) {
            s += std::string(" thread ") + std::to_string(i) +
                 (f.state == State::AtBarrier ? " at __syncthreads (" : " at __shfl_xor_sync (") + f.site + ");";
            shown++;
        }
    }
    s += " " + std::to_string(exited) + " returned";
    return s;
}

struct sigaction g_old_segv, g_old_bus;

void chain(int sig, siginfo_t *info, void *uctx) {
    const struct sigaction &old = sig == SIGSEGV ? g_old_segv : g_old_bus;
    if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction) {
        old.sa_sigaction(sig, info, uctx);
        return;
    }
    if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
        old.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  // the fault repeats on return and ends the process as usual
}

void on_fault(int sig, siginfo_t *info, void *uctx) {
    Executor *ex = tl_exec;
    if (!ex || !ex->in_kernel) {
        chain(sig, info, uctx);
        return;
    }
    const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    const bool write = (static_cast<ucontext_t *>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
    char head[96];
    snprintf(head, sizeof head, "%s at 0x%llx", write ? "write" : "read",
             static_cast<unsigned long long>(addr));
    std::string what = describe_address(addr);
    if (what.empty()) what = ex->stack_fault(addr) ? "a CUDA thread's stack overflowed" : "not device memory";
    const std::string who = ex->current ? ex->where(ex->current) : std::string("outside any thread");
    ex->fail(cudaErrorIllegalAddress, who + ": out-of-bounds " + head + " (" + what + ")");
    siglongjmp(ex->fault_jump, 1);
}

}  // namespace

void install_fault_handler() {
    static bool done = [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
        return true;
    }();
    (void)done;
}

void syncthreads(const char *site) {
    Executor &ex = *tl_exec;
    Fiber *f = ex.current;
    f->state = State::AtBarrier;
    f->site = site;
    ex.at_barrier++;
    if (ex.at_barrier + ex.exited == ex.n_threads) {
        if (ex.exited > 0) {
            ex.fail(cudaErrorLaunchFailure, std::to_string(ex.exited) + " thread(s) of block (" +
                                                std::to_string(ex.block_idx.x) + "," +
                                                std::to_string(ex.block_idx.y) + "," +
                                                std::to_string(ex.block_idx.z) +
                                                ") returned before __syncthreads() (" + site +
                                                ") that the others wait at");
        } else {
            for (int i = 0; i < ex.n_threads; ++i) {
                Fiber &g = ex.fibers[i];
                if (g.site != site && strcmp(g.site, site) != 0) {
                    ex.fail(cudaErrorLaunchFailure, std::string("threads of a block wait at different "
                                                                "__syncthreads(): ") +
                                                        g.site + " and " + site);
                    break;
                }
            }
            if (!ex.failed) {
                for (int i = 0; i < ex.n_threads; ++i) ex.fibers[i].state = State::Runnable;
                ex.at_barrier = 0;
            }
        }
    }
    ex.yield();
}

// The checks of a shuffle's mask; "" when the call is valid (the fast path builds no string).
std::string shfl_misuse(const Warp &w, unsigned mask, unsigned exist, int lane, const char *site) {
    char m[64];
    snprintf(m, sizeof m, "mask 0x%08x", mask);
    if (!(mask & (1u << lane))) return std::string(m) + " does not name the calling lane " + std::to_string(lane);
    if (mask & ~exist) return std::string(m) + " names lanes past the block's last thread";
    if (mask & w.exited) return std::string(m) + " names lane(s) that returned";
    return std::string("lanes of a warp meet at different shuffles: ") + w.site + " and " + site;
}

uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width, const char *site) {
    Executor &ex = *tl_exec;
    Fiber *f = ex.current;
    const int lane = f->index % WARP, base = f->index - lane;
    Warp &w = ex.warps[f->index / WARP];
    const unsigned bit = 1u << lane;
    const int lanes = std::min(WARP, ex.n_threads - base);
    const unsigned exist = lanes == WARP ? ~0u : (1u << lanes) - 1;
    if (!(mask & bit) || (mask & ~exist) || (mask & w.exited) ||
        (w.arrived && (w.mask != mask || (w.site != site && strcmp(w.site, site) != 0)))) {
        ex.fail(cudaErrorLaunchFailure,
                ex.where(f) + ": __shfl_xor_sync (" + site + "): " + shfl_misuse(w, mask, exist, lane, site));
        ex.yield();
    }
    f->shfl_value = bits;
    f->shfl_lane_mask = lane_mask;
    f->state = State::AtShuffle;
    f->site = site;
    if (!w.arrived) {
        w.mask = mask;
        w.site = site;
    }
    w.arrived |= bit;
    if (w.arrived == mask) {
        uint64_t vals[WARP];
        for (int l = 0; l < WARP; ++l) {
            if (mask & (1u << l)) vals[l] = ex.fibers[base + l].shfl_value;
        }
        for (int l = 0; l < WARP; ++l) {
            if (!(mask & (1u << l))) continue;
            Fiber &g = ex.fibers[base + l];
            const int src = l ^ g.shfl_lane_mask;
            if ((g.shfl_lane_mask & ~(width - 1)) != 0) {
                g.shfl_value = vals[l];  // source past the segment: the lane's own value
            } else if (!(mask & (1u << src))) {
                char m[64];
                snprintf(m, sizeof m, "mask 0x%08x", mask);
                ex.fail(cudaErrorLaunchFailure, ex.where(&g) + ": __shfl_xor_sync (" + site + "): lane " +
                                                    std::to_string(l) + " reads lane " + std::to_string(src) +
                                                    ", which is not in " + m);
                break;
            } else {
                g.shfl_value = vals[src];
            }
            g.state = State::Runnable;
        }
        w.arrived = 0;
        w.mask = 0;
    }
    ex.yield();
    return f->shfl_value;
}

void *dynamic_shared() {
    return tl_exec->dynamic_base();
}

namespace {

// One launch's blocks, shared by the stream's host thread and the pool's helpers: each takes
// the next block index until none is left or one failed.
struct Job {
    const Launch *launch;
    uint64_t seed;
    uint64_t n_blocks;
    bool reverse;
    std::atomic<uint64_t> next{0};
    std::atomic<int> helpers{0};
    std::atomic<bool> failed{false};
    std::mutex m;
    cudaError_t error = cudaSuccess;
    std::string message;
};

// Run blocks of `job` on this host thread. Each block's thread orders come from the launch's
// seed and the block's index only, so results do not depend on which host thread ran it.
void work(Job &job) {
    Executor &ex = executor();
    const Launch &l = *job.launch;
    ex.launch = &l;
    ex.failed = false;
    ex.ensure_stacks(static_cast<int>(l.block.x * l.block.y * l.block.z));
    if (sigsetjmp(ex.fault_jump, 1) == 0) {
        ex.in_kernel = true;
        while (!job.failed.load(std::memory_order_relaxed)) {
            const uint64_t k = job.next.fetch_add(1);
            if (k >= job.n_blocks) break;
            const uint64_t i = job.reverse ? job.n_blocks - 1 - k : k;
            uint64_t mix = job.seed ^ (i * 0xd1b54a32d192ed03ull);
            ex.rng = splitmix(mix);
            const unsigned x = static_cast<unsigned>(i % l.grid.x);
            const unsigned y = static_cast<unsigned>((i / l.grid.x) % l.grid.y);
            const unsigned z = static_cast<unsigned>(i / (static_cast<uint64_t>(l.grid.x) * l.grid.y));
            ex.run_block({x, y, z});
            if (ex.failed) break;
        }
    }
    ex.in_kernel = false;
    ex.current = nullptr;
    tl_ctx = nullptr;
    if (ex.failed) {
        std::lock_guard<std::mutex> lock(job.m);
        if (!job.failed.exchange(true)) {
            job.error = ex.error;
            job.message = ex.message;
        }
    }
}

// Host threads that help run the blocks of large launches (ROTARY_EMU_THREADS in all,
// default: the machine's cores).
struct Pool {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::shared_ptr<Job>> jobs;

    Pool() {
        const int n = config().threads - 1;
        for (int i = 0; i < n; ++i) std::thread([this] { loop(); }).detach();
    }

    void loop() {
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(m);
                cv.wait(lock, [this] { return !jobs.empty(); });
                job = jobs.front();
                if (job->next.load() >= job->n_blocks || job->failed.load()) {
                    jobs.pop_front();
                    continue;
                }
                job->helpers++;
            }
            work(*job);
            job->helpers--;
        }
    }
};

Pool &pool() {
    static Pool *p = new Pool();  // never destroyed: its threads outlive main's statics
    return *p;
}

}  // namespace

cudaError_t run_launch(const Launch &l, uint64_t seed, std::string &message) {
    install_fault_handler();
    auto job = std::make_shared<Job>();
    job->launch = &l;
    job->seed = seed;
    job->n_blocks = static_cast<uint64_t>(l.grid.x) * l.grid.y * l.grid.z;
    uint64_t r = seed;
    job->reverse = splitmix(r) & 1;
    const bool share = job->n_blocks >= 8 && config().threads > 1;
    if (share) {
        Pool &p = pool();
        {
            std::lock_guard<std::mutex> lock(p.m);
            p.jobs.push_back(job);
        }
        p.cv.notify_all();
    }
    work(*job);
    if (share) {
        Pool &p = pool();
        {
            std::lock_guard<std::mutex> lock(p.m);
            for (auto it = p.jobs.begin(); it != p.jobs.end(); ++it) {
                if (*it == job) {
                    p.jobs.erase(it);
                    break;
                }
            }
        }
        while (job->helpers.load() != 0) std::this_thread::yield();
    }
    message = job->message;
    return job->failed.load() ? job->error : cudaSuccess;
}

}  // namespace rotary_emu
