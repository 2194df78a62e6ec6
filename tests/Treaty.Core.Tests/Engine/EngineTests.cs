using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;
using Treaty.Testing;
using static Treaty.Core.Tests.Support.SagaSpecs;

namespace Treaty.Core.Tests.Engine;

public sealed class EngineTests : IAsyncLifetime
{
    /// <summary>How long a test waits for something the engine does on another thread.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private const string Action = ProtocolNames.Action;
    private const string Compensate = ProtocolNames.Compensate;

    private readonly Timeline _timeline = new();
    private readonly ManualTimeProvider _time = new(T0);
    private readonly InMemoryTransactionStore _store;
    private readonly ScriptedBranchInvoker _invoker;
    private readonly RecordingObserver _observer = new();
    private readonly List<TransactionEngine> _engines = [];
    private readonly TransactionEngine _engine;

    public EngineTests()
    {
        // The store's leases expire by the same manual clock (the database's, in production).
        _store = new InMemoryTransactionStore(_timeline, _time);
        _invoker = new ScriptedBranchInvoker(_store, _timeline);
        _engine = NewEngine();
    }

    // A test that hangs is cut off instead of stalling the run.
    private readonly CancellationTokenSource _testTimeout = new(TimeSpan.FromSeconds(30));

    private CancellationToken Ct => _testTimeout.Token;

    private TransactionEngine NewEngine()
    {
        var engine = new TransactionEngine(
            _store, _invoker, [new SagaMachine()], _time, new FixedRandom(0.5), NullLogger<TransactionEngine>.Instance, _observer);
        _engines.Add(engine);
        return engine;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var engine in _engines)
        {
            await engine.DisposeAsync();
        }

        _testTimeout.Dispose();
    }

    private static TransactionSpec Checkout(RetryPolicy? retry = null) => Sequential(retry, "order", "payment");

    // Order, then payment as the pivot: every decision that calls is written ahead (a forward step
    // to a tentative action does not wait for its write; see the ForwardStep tests).
    private static TransactionSpec PivotCheckout() =>
        Saga([Branch("order"), Branch("payment", dependsOn: ["order"], pivot: true, compensate: false)]);

    private async Task<PendingCall> ExpectCallAsync(string name)
    {
        var call = await _invoker.NextCallAsync();
        call.Name.ShouldBe(name);
        return call;
    }

    private static void ShouldHaveBeenDurableBeforeTheCall(PendingCall call)
    {
        // Write-ahead: the decision that asked for this call was stored before the call was made.
        var durable = call.DurableAtInvoke.ShouldNotBeNull();
        var index = durable.Spec.Branches.Select(b => b.Name).ToList().IndexOf(call.Call.Branch!);
        var op = durable.Branches[index].Op(call.Call.Op);
        op.Status.ShouldBe(OpStatus.InFlight);
        op.Attempts.ShouldBe(call.Call.Attempt);
    }

    /// <summary>Holds the store's next update until the test releases it (and lets later ones through once released).</summary>
    private (Task<TransactionState> Writing, TaskCompletionSource Release) HoldTheNextWrite()
    {
        var writing = new TaskCompletionSource<TransactionState>(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _store.BeforeUpdate = async state =>
        {
            writing.TrySetResult(state);
            await release.Task;
        };
        return (writing.Task, release);
    }

    private async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = TimeProvider.System.GetTimestamp();
        while (!condition())
        {
            TimeProvider.System.GetElapsedTime(deadline).ShouldBeLessThan(Timeout, "the condition never held");
            await Task.Delay(TimeSpan.FromMilliseconds(2), TimeProvider.System, Ct);
        }
    }

    [Fact]
    public async Task SubmitAsync_NewGid_StoresTheTransactionBeforeTheFirstInvoke()
    {
        var result = await _engine.SubmitAsync(Checkout(), "fp-1", Ct);

        result.Status.ShouldBe(SubmitStatus.Created);
        result.State.Version.ShouldBe(1);
        result.State.Status.ShouldBe(TransactionStatus.Running);
        var call = await ExpectCallAsync("order.action#1");
        _timeline.IndexOf("insert v1").ShouldBeLessThan(_timeline.IndexOf("invoke order.action#1"));
        ShouldHaveBeenDurableBeforeTheCall(call);
        call.Call.Gid.ShouldBe("tx-1");
        call.Call.Url.ShouldBe("http://svc.test/order/action");
        call.Call.IdempotencyKey.ShouldBe("tx-1/order/action");
        call.Call.PayloadJson.ShouldBe("""{"order":42}""");
        _store.Peek("tx-1").ShouldNotBeNull().Fingerprint.ShouldBe("fp-1");
        (await _store.GetJournalAsync("tx-1", Ct)).Select(r => r.Entry.Kind).ShouldContain(JournalKinds.Submitted);
    }

    [Fact]
    public async Task Engine_EveryDecisionWithAnInvokeButAForwardStep_IsPersistedBeforeTheInvokerIsCalled()
    {
        await _engine.SubmitAsync(PivotCheckout(), "fp-1", Ct);
        var order = await ExpectCallAsync("order.action#1");

        // Hold the next write: nothing may be called while it is not durable.
        var (writing, release) = HoldTheNextWrite();
        order.Succeed();
        var pendingWrite = await writing.WaitAsync(Timeout, Ct);
        pendingWrite.Branches[1].Op(Action).Status.ShouldBe(OpStatus.InFlight);
        _invoker.Received.Count.ShouldBe(1);
        _invoker.HasWaitingCall.ShouldBeFalse();

        _store.BeforeUpdate = null;
        release.SetResult();
        var payment = await ExpectCallAsync("payment.action#1");

        ShouldHaveBeenDurableBeforeTheCall(payment);
        payment.DurableAtInvoke!.Version.ShouldBe(2);
        _timeline.IndexOf("update v2").ShouldBeLessThan(_timeline.IndexOf("invoke payment.action#1"));
    }

    [Fact]
    public async Task ForwardStep_TheNextActionLeavesWhileItsWriteIsOnItsWay_AndItsAnswerWaitsForTheWrite()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        var order = await ExpectCallAsync("order.action#1");
        var (writing, release) = HoldTheNextWrite();

        order.Succeed();
        var payment = await ExpectCallAsync("payment.action#1");
        (await writing.WaitAsync(Timeout, Ct)).Branches[1].Op(Action).Status.ShouldBe(OpStatus.InFlight);
        payment.DurableAtInvoke.ShouldNotBeNull().Version.ShouldBe(1, "the step's write was not durable yet");

        // Its answer is not taken until the write it followed is durable: the lag is one step.
        var waiting = _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct);
        payment.Succeed();
        await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, Ct);
        waiting.IsCompleted.ShouldBeFalse();
        _store.Peek("tx-1").ShouldNotBeNull().Version.ShouldBe(1);

        _store.BeforeUpdate = null;
        release.SetResult();
        var done = (await waiting.WaitAsync(Timeout, Ct)).ShouldNotBeNull();
        done.Status.ShouldBe(TransactionStatus.Committed);
        done.Version.ShouldBe(3);
        _timeline.IndexOf("invoke payment.action#1").ShouldBeLessThan(_timeline.IndexOf("update v2"));
    }

    [Fact]
    public async Task ForwardStep_ItsWriteFails_TheResumedTransactionCountsTheCallAsMaybeApplied_AndAnAbortUndoesIt()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        var order = await ExpectCallAsync("order.action#1");
        _store.BeforeUpdate = _ => throw new IOException("disk full");

        order.Succeed();
        var payment = await ExpectCallAsync("payment.action#1"); // left before its write failed
        await WaitUntilAsync(() => _engine.ActiveCount == 0);
        var durable = _store.Peek("tx-1").ShouldNotBeNull();
        durable.Version.ShouldBe(1);
        durable.Branches[1].Op(Action).Status.ShouldBe(OpStatus.NotStarted);

        _store.BeforeUpdate = null;
        await _engine.ResumeAsync("tx-1", Ct);
        var resumed = _store.Peek("tx-1").ShouldNotBeNull();
        resumed.Branches[1].Op(Action).MaybeCalled.ShouldBeTrue();
        resumed.Branches[1].Op(Action).MayHaveApplied().ShouldBeTrue();
        payment.Succeed(); // its answer reaches an instance that unloaded the transaction: dropped

        (await _engine.AbortAsync("tx-1", "alice", "customer called", Ct)).Status.ShouldBe(AdminStatus.Accepted);
        (await ExpectCallAsync("payment.compensate#1")).Succeed();
        (await ExpectCallAsync("order.compensate#1")).Succeed();
        var done = (await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull();
        done.Status.ShouldBe(TransactionStatus.Aborted);
        done.Branches[1].Op(Compensate).Status.ShouldBe(OpStatus.Succeeded);
    }

    [Fact]
    public async Task ForwardStep_AStaleOwnersStepSendsOneCall_AndTheNewOwnerCountsItAsMaybeApplied()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        var late = await ExpectCallAsync("order.action#1");
        var other = NewEngine();
        (await other.RetryAsync("tx-1", "alice", Ct)).Status.ShouldBe(AdminStatus.Accepted);
        var again = await ExpectCallAsync("order.action#2");
        other.ActiveCount.ShouldBe(1);
        _store.Peek("tx-1").ShouldNotBeNull().Branches[1].Op(Action).MaybeCalled.ShouldBeTrue("taken over from a state whose next step may have left");

        // The old owner's answer comes late: its forward step sends payment's action, then its write is fenced.
        late.Succeed();
        var stale = await ExpectCallAsync("payment.action#1");
        await WaitUntilAsync(() => _engine.ActiveCount == 0);
        stale.Succeed();

        (await other.AbortAsync("tx-1", "alice", "customer called", Ct)).Status.ShouldBe(AdminStatus.Accepted);
        again.Succeed();
        (await ExpectCallAsync("payment.compensate#1")).Succeed();
        (await ExpectCallAsync("order.compensate#1")).Succeed();
        (await other.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Aborted);
    }

    [Fact]
    public async Task WaitAsync_ReturnsTheTerminalState()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        var waiting = _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct);
        waiting.IsCompleted.ShouldBeFalse();

        (await ExpectCallAsync("order.action#1")).Succeed();
        (await ExpectCallAsync("payment.action#1")).Succeed();
        var terminal = (await waiting.WaitAsync(Timeout, Ct)).ShouldNotBeNull();

        terminal.Status.ShouldBe(TransactionStatus.Committed);
        terminal.Version.ShouldBe(3);
        _store.Peek("tx-1").ShouldBe(terminal);
        _observer.FinishedStates.ShouldHaveSingleItem().Status.ShouldBe(TransactionStatus.Committed);
        await WaitUntilAsync(() => _engine.ActiveCount == 0);
        (await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldBe(terminal); // from the store
    }

    [Fact]
    public async Task WaitAsync_TimeoutPasses_ReturnsTheLatestState()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");
        var waiting = _engine.WaitAsync("tx-1", TimeSpan.FromSeconds(5), Ct);

        _time.Advance(TimeSpan.FromSeconds(5));
        var latest = (await waiting.WaitAsync(Timeout, Ct)).ShouldNotBeNull();

        latest.Status.ShouldBe(TransactionStatus.Running);
    }

    [Fact]
    public async Task WaitAsync_UnknownGid_ReturnsNull() =>
        (await _engine.WaitAsync("nope", TimeSpan.FromSeconds(1), Ct)).ShouldBeNull();

    [Fact]
    public async Task SubmitAsync_SameGidSameFingerprint_ReturnsExistingWithoutStartingAgain()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");

        var again = await _engine.SubmitAsync(Checkout(), "fp-1", Ct);

        again.Status.ShouldBe(SubmitStatus.Existing);
        again.State.Gid.ShouldBe("tx-1");
        _store.Inserts.ShouldBe(1);
        _invoker.Received.Count.ShouldBe(1);
    }

    [Fact]
    public async Task SubmitAsync_SameGidDifferentFingerprint_ReturnsConflict()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);

        var conflict = await _engine.SubmitAsync(Sequential("other"), "fp-2", Ct);

        conflict.Status.ShouldBe(SubmitStatus.Conflict);
        conflict.State.Fingerprint.ShouldBe("fp-1");
        _store.Inserts.ShouldBe(1);
    }

    [Fact]
    public async Task SubmitAsync_GidOnlyInTheStore_ReturnsExistingOrConflict()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        var other = NewEngine(); // another coordinator instance: nothing in memory

        (await other.SubmitAsync(Checkout(), "fp-1", Ct)).Status.ShouldBe(SubmitStatus.Existing);
        (await other.SubmitAsync(Checkout(), "fp-2", Ct)).Status.ShouldBe(SubmitStatus.Conflict);
        other.ActiveCount.ShouldBe(0);
        _store.Inserts.ShouldBe(1);
    }

    [Fact]
    public async Task Engine_StoreUpdateFails_DoesNotInvokeAndUnloadsThenResumeContinuesFromTheDurableState()
    {
        await _engine.SubmitAsync(PivotCheckout(), "fp-1", Ct);
        var order = await ExpectCallAsync("order.action#1");
        var failed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _store.BeforeUpdate = _ =>
        {
            failed.TrySetResult();
            throw new IOException("disk full");
        };

        order.Succeed();
        await failed.Task.WaitAsync(Timeout, Ct);
        await WaitUntilAsync(() => _engine.ActiveCount == 0);

        _invoker.Received.Select(c => c.Name).ShouldBe(["order.action#1"]); // payment was never called
        var durable = _store.Peek("tx-1").ShouldNotBeNull();
        durable.Version.ShouldBe(1);
        durable.Branches[0].Op(Action).Status.ShouldBe(OpStatus.InFlight); // the success was never stored

        _store.BeforeUpdate = null;
        await _engine.ResumeAsync("tx-1", Ct);

        // The durable state says order's call is in flight with an unknown outcome: retry it after the backoff.
        var resumed = _store.Peek("tx-1").ShouldNotBeNull();
        resumed.Branches[0].Op(Action).Status.ShouldBe(OpStatus.Waiting);
        _invoker.HasWaitingCall.ShouldBeFalse();
        _time.Advance(Backoff.Delay(1, RetryPolicy.Default, 0.5));
        var retry = await ExpectCallAsync("order.action#2");
        ShouldHaveBeenDurableBeforeTheCall(retry);
        retry.Succeed();
        (await ExpectCallAsync("payment.action#1")).Succeed();

        (await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
    }

    [Fact]
    public async Task ResumeAsync_OnAnotherEngineAfterACrash_RetriesTheCallsThatWereInFlight()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");
        // The coordinator dies with the call in flight. (Disposed here and not again at the end:
        // TransactionEngine.DisposeAsync throws when called twice.)
        _engines.Remove(_engine);
        await _engine.DisposeAsync();

        // Another instance: the dead one's lease holds it off until it expires.
        var recovered = NewEngine();
        await recovered.ResumeAsync("tx-1", Ct);
        recovered.ActiveCount.ShouldBe(0);
        _time.Advance(LeaseDefaults.Duration);
        await recovered.ResumeAsync("tx-1", Ct);
        recovered.ActiveCount.ShouldBe(1);
        _store.LeaseOf("tx-1").ShouldBe((recovered.Lease.Owner, 2L, T0 + LeaseDefaults.Duration * 2));
        (await _store.GetJournalAsync("tx-1", Ct)).ShouldContain(r => r.Entry.Kind == JournalKinds.Resumed && r.Entry.Detail == $"by {recovered.Lease.Owner} at epoch 2");
        _observer.Resumes.ToArray().ShouldBe(new[] { ("tx-1", TransactionStatus.Running, 2L, false) }, "one recovery, reported once, not at the refused attempt");
        _time.Advance(TimeSpan.FromSeconds(1));

        (await ExpectCallAsync("order.action#2")).Succeed();
        (await ExpectCallAsync("payment.action#1")).Succeed();
        (await recovered.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
    }

    [Fact]
    public async Task ResumeAsync_UnknownOrTerminal_DoesNothing()
    {
        await _engine.ResumeAsync("nope", Ct);
        _engine.ActiveCount.ShouldBe(0);

        await _engine.SubmitAsync(Sequential("order"), "fp-1", Ct);
        (await ExpectCallAsync("order.action#1")).Succeed();
        await _store.WaitForAsync("tx-1", s => s.IsTerminal);
        await WaitUntilAsync(() => _engine.ActiveCount == 0);

        await _engine.ResumeAsync("tx-1", Ct);
        _engine.ActiveCount.ShouldBe(0);
    }

    [Fact]
    public async Task RetryAsync_StuckCompensation_IsAcceptedAndInvokesAtOnce()
    {
        await _engine.SubmitAsync(Checkout(new RetryPolicy(1, 100, 60_000)), "fp-1", Ct);
        (await ExpectCallAsync("order.action#1")).Succeed();
        (await ExpectCallAsync("payment.action#1")).Fail();
        (await ExpectCallAsync("order.compensate#1")).Unknown();
        var stuck = await _store.WaitForAsync("tx-1", s => s.Stuck);
        stuck.Status.ShouldBe(TransactionStatus.Aborting);
        await WaitUntilAsync(() => !_observer.Alerts.IsEmpty);
        _observer.Alerts.ShouldHaveSingleItem().Kind.ShouldBe("stuck");

        var result = await _engine.RetryAsync("tx-1", "alice", Ct);

        result.Status.ShouldBe(AdminStatus.Accepted);
        var state = result.State.ShouldNotBeNull();
        state.Stuck.ShouldBeFalse();
        state.Branches[0].Op(Compensate).Status.ShouldBe(OpStatus.InFlight);
        var retry = await ExpectCallAsync("order.compensate#2"); // no clock advance needed
        ShouldHaveBeenDurableBeforeTheCall(retry);
        retry.Succeed();
        (await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Aborted);
        (await _store.GetJournalAsync("tx-1", Ct)).ShouldContain(r => r.Entry.Kind == JournalKinds.OperatorRetry && r.Entry.Detail == "by alice");
    }

    [Fact]
    public async Task Observer_SeesEachDurableDecisionWithItsPredecessor_TheAbortOnce_AndStuckBothWays()
    {
        await _engine.SubmitAsync(Checkout(new RetryPolicy(1, 100, 60_000)), "fp-1", Ct);
        (await ExpectCallAsync("order.action#1")).Succeed();
        (await ExpectCallAsync("payment.action#1")).Fail();
        (await ExpectCallAsync("order.compensate#1")).Unknown();
        await _store.WaitForAsync("tx-1", s => s.Stuck);
        await WaitUntilAsync(() => _observer.StuckChanges.Count == 1);
        await _engine.RetryAsync("tx-1", "alice", Ct);
        (await ExpectCallAsync("order.compensate#2")).Succeed();
        await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct);
        await WaitUntilAsync(() => _observer.FinishedStates.Count == 1);

        var decisions = _observer.Decisions.ToList();
        decisions.ShouldAllBe(d => d.Next.Version == d.Previous.Version + 1, "each decision follows the durable state it replaced");
        var decided = decisions.Where(d => d.Previous.Outcome is null && d.Next.Outcome is not null).ShouldHaveSingleItem();
        decided.Next.Outcome.ShouldBe(TransactionOutcome.Abort);
        decided.Next.Status.ShouldBe(TransactionStatus.Aborting);
        _observer.StuckChanges.ShouldBe([true, false]);
        decisions[^1].Next.Status.ShouldBe(TransactionStatus.Aborted);
    }

    [Fact]
    public async Task RetryAsync_TransactionNotLoaded_ResumesItAndIsAccepted()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");
        var other = NewEngine();

        var result = await other.RetryAsync("tx-1", "alice", Ct);

        result.Status.ShouldBe(AdminStatus.Accepted);
        other.ActiveCount.ShouldBe(1);
        // Resumed made the in-flight call a waiting retry; the operator's retry starts it at once.
        await ExpectCallAsync("order.action#2");
    }

    [Fact]
    public async Task RetryAsync_UnknownGid_IsNotFound()
    {
        var result = await _engine.RetryAsync("nope", "alice", Ct);

        result.Status.ShouldBe(AdminStatus.NotFound);
        result.State.ShouldBeNull();
    }

    [Fact]
    public async Task AdminActions_TerminalTransaction_AreRefused()
    {
        await _engine.SubmitAsync(Sequential("order"), "fp-1", Ct);
        (await ExpectCallAsync("order.action#1")).Succeed();
        var terminal = await _store.WaitForAsync("tx-1", s => s.IsTerminal);
        await WaitUntilAsync(() => _engine.ActiveCount == 0);

        var retry = await _engine.RetryAsync("tx-1", "alice", Ct);
        var abort = await _engine.AbortAsync("tx-1", "alice", "too late", Ct);

        retry.Status.ShouldBe(AdminStatus.Refused);
        abort.Status.ShouldBe(AdminStatus.Refused);
        abort.State.ShouldBe(terminal);
        _store.Peek("tx-1").ShouldBe(terminal);
    }

    [Fact]
    public async Task AbortAsync_BeforePivot_IsAcceptedAndCompensates()
    {
        var spec = Saga([Branch("order"), Branch("charge", ["order"], pivot: true)]);
        await _engine.SubmitAsync(spec, "fp-1", Ct);
        var order = await ExpectCallAsync("order.action#1");

        var result = await _engine.AbortAsync("tx-1", "alice", "customer called", Ct);

        result.Status.ShouldBe(AdminStatus.Accepted);
        result.State.ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Aborting);
        _store.Peek("tx-1").ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Aborting);
        order.Succeed();
        (await ExpectCallAsync("order.compensate#1")).Succeed();
        var done = (await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull();
        done.Status.ShouldBe(TransactionStatus.Aborted);
        done.Branches[1].Op(Action).Attempts.ShouldBe(0);
    }

    [Fact]
    public async Task AbortAsync_AfterPivotStarted_IsRefusedAndChangesNothing()
    {
        var spec = Saga([Branch("order"), Branch("charge", ["order"], pivot: true)]);
        await _engine.SubmitAsync(spec, "fp-1", Ct);
        (await ExpectCallAsync("order.action#1")).Succeed();
        await ExpectCallAsync("charge.action#1");
        var before = _store.Peek("tx-1").ShouldNotBeNull();

        var result = await _engine.AbortAsync("tx-1", "alice", null, Ct);

        result.Status.ShouldBe(AdminStatus.Refused);
        result.State.ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Running);
        _store.Peek("tx-1").ShouldBeSameAs(before);
    }

    [Fact]
    public async Task AbortAsync_UnknownGid_IsNotFound() =>
        (await _engine.AbortAsync("nope", "alice", null, Ct)).Status.ShouldBe(AdminStatus.NotFound);

    [Fact]
    public async Task Engine_TimerFiresBeforeTheRetryIsDue_RearmsAndStillRetries()
    {
        // Found by the demo: a system timer fired a fraction of a millisecond early, the decision
        // changed nothing, and the timer was never armed again: the retry never happened.
        var early = new EarlyTimeProvider(_time, TimeSpan.FromMilliseconds(5));
        await using var engine = new TransactionEngine(
            _store, _invoker, [new SagaMachine()], early, new FixedRandom(0.5), NullLogger<TransactionEngine>.Instance, _observer);
        await engine.SubmitAsync(Checkout(), "fp-1", Ct);
        (await ExpectCallAsync("order.action#1")).Unknown();
        await WaitUntilAsync(() => _store.Peek("tx-1")?.Branches[0].Op(Action).Status == OpStatus.Waiting);

        var delay = Backoff.Delay(1, RetryPolicy.Default, 0.5);
        var retryAt = _time.GetUtcNow() + delay;
        // The engine arms its timer on its own thread, after the write the test saw, and again after
        // the early tick. Each time the clock may move only once the timer is armed: moved before,
        // the timer is armed from a clock that has gone on, past any time the test will advance to.
        await WaitUntilAsync(() => _time.HasTimerDueAt(retryAt - TimeSpan.FromMilliseconds(5)));
        _time.Advance(delay - TimeSpan.FromMilliseconds(5)); // the early wake-up: nothing is due yet
        _invoker.HasWaitingCall.ShouldBeFalse();
        await WaitUntilAsync(() => _time.HasTimerDueAt(retryAt));
        _time.Advance(TimeSpan.FromMilliseconds(5));        // the re-armed timer: now it is

        (await ExpectCallAsync("order.action#2")).Succeed();
        (await ExpectCallAsync("payment.action#1")).Succeed();
        (await engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
    }

    [Fact]
    public async Task ResumeAsync_AnotherRunnerWinsTheRace_DisposesTheLosersTimer()
    {
        // As after a restart: the transaction is in the store, nothing is in memory.
        var machine = new SagaMachine();
        var decision = machine.Decide(machine.Create(Checkout(), "fp-1", T0), new Submitted(), new DecisionContext(T0, new FixedRandom(0.5)));
        (await _store.InsertAsync(decision.Next with { Version = 1 }, decision.Journal, Ct)).ShouldBeNull();

        var timers = new CountingTimeProvider(_time);
        await using var engine = new TransactionEngine(
            _store, _invoker, [new SagaMachine()], timers, new FixedRandom(0.5), NullLogger<TransactionEngine>.Instance, _observer);
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reads = 0;
        _store.BeforeGet = _ => Interlocked.Increment(ref reads) == 1 ? held.Task : Task.CompletedTask;

        var first = engine.ResumeAsync("tx-1", Ct);   // held in its read of the store
        await WaitUntilAsync(() => Volatile.Read(ref reads) == 1);
        var second = engine.ResumeAsync("tx-1", Ct);  // waits for the first instead of claiming again
        await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, Ct);
        second.IsCompleted.ShouldBeFalse("a second claim would fence out the first runner");
        held.SetResult();
        await first;
        await second;                                 // finds the runner already there

        engine.ActiveCount.ShouldBe(1);
        _store.LeaseOf("tx-1").Epoch.ShouldBe(1L, "claimed once");
        timers.Live.ShouldBe(2, "the engine's lease renewal, and only the runner that drives the transaction");
    }

    [Fact]
    public async Task Lease_OperatorActsOnAnotherInstance_ItTakesOverAndTheOldOwnersLateAnswerIsFenced()
    {
        await _engine.SubmitAsync(PivotCheckout(), "fp-1", Ct);
        var late = await ExpectCallAsync("order.action#1");
        var other = NewEngine();

        // The operator's retry reaches the other instance: it claims the transaction (epoch 2).
        (await other.RetryAsync("tx-1", "alice", Ct)).Status.ShouldBe(AdminStatus.Accepted);
        _store.LeaseOf("tx-1").ShouldBe((other.Lease.Owner, 2L, T0 + LeaseDefaults.Duration));
        other.ActiveCount.ShouldBe(1);
        var again = await ExpectCallAsync("order.action#2");

        // The first instance's call answers late: its write is refused and it lets go.
        var before = _store.Peek("tx-1")!.Version;
        late.Succeed();
        await WaitUntilAsync(() => _engine.ActiveCount == 0);
        _store.Peek("tx-1")!.Version.ShouldBe(before, "the old owner wrote nothing");
        _observer.Resumes.ToArray().ShouldBe(new[] { ("tx-1", TransactionStatus.Running, 2L, true) }, "the operator's take-over");
        _observer.LeasesLost.ToArray().ShouldBe(new[] { ("tx-1", 1L, false) }, "the old owner found out by its fenced write");

        again.Succeed();
        (await ExpectCallAsync("payment.action#1")).Succeed();
        (await other.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
        _store.LeaseOf("tx-1").Owner.ShouldBeNull("a finished transaction is nobody's");
    }

    [Fact]
    public async Task Lease_StaleOwnerWakesUpMidCall_ItsWriteIsFencedAndNothingIsWritten()
    {
        await _engine.SubmitAsync(PivotCheckout(), "fp-1", Ct);
        var late = await ExpectCallAsync("order.action#1");
        // Paused past its lease: another instance claimed the transaction and has not written yet,
        // so the stale owner's write comes at the right version and only the fence stops it.
        (await _store.ClaimAsync("tx-1", new LeaseRequest("someone-else", LeaseDefaults.Duration), takeOver: true, Ct)).ShouldNotBeNull();
        var before = _store.Peek("tx-1")!;

        late.Succeed();

        await WaitUntilAsync(() => _engine.ActiveCount == 0);
        _observer.LeasesLost.ToArray().ShouldBe(new[] { ("tx-1", 1L, false) });
        _timeline.Entries.ShouldContain($"fenced v{before.Version + 1}");
        _store.Peek("tx-1").ShouldBe(before);
        _invoker.Received.Count.ShouldBe(1, "a stale owner makes no new call");
    }

    [Fact]
    public async Task Lease_RenewalFindsItLost_TheRunnerIsDropped()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");
        (await _store.ClaimAsync("tx-1", new LeaseRequest("someone-else", LeaseDefaults.Duration), takeOver: true, Ct)).ShouldNotBeNull();

        await _engine.RenewLeasesAsync();

        _engine.ActiveCount.ShouldBe(0);
        _store.LeaseOf("tx-1").Owner.ShouldBe("someone-else");
        _observer.LeasesLost.ToArray().ShouldBe(new[] { ("tx-1", 1L, true) });
        _observer.RenewFailures.ShouldBeEmpty();
    }

    [Fact]
    public async Task Lease_RenewalFails_ItIsReported_TheRunnerCarriesOnUnderItsLease()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        var call = await ExpectCallAsync("order.action#1");
        _store.RenewFailure = new TimeoutException("the store did not answer");

        await _engine.RenewLeasesAsync();

        _observer.RenewFailures.ToArray().ShouldBe(new[] { 1 }, "one renewal of the one transaction held failed");
        _observer.LeasesLost.ShouldBeEmpty("a failed renewal loses nothing yet");
        _engine.ActiveCount.ShouldBe(1);
        _store.RenewFailure = null;
        call.Succeed();
        (await ExpectCallAsync("payment.action#1")).Succeed();
        (await _engine.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
        _observer.Resumes.ShouldBeEmpty("its own transaction, never taken over");
    }

    [Fact]
    public async Task Lease_RenewedEveryThirdOfTheLease_NobodyElseCanClaimWhileTheOwnerLives()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");
        var other = NewEngine();

        // Three lease lengths pass; the owner's renewals keep the transaction its own.
        for (var i = 0; i < 9; i++)
        {
            _time.Advance(LeaseDefaults.Duration / 3);
            await WaitUntilAsync(() => _store.LeaseOf("tx-1").Until >= _time.GetUtcNow() + (LeaseDefaults.Duration / 2));
            await other.ResumeAsync("tx-1", Ct);
            other.ActiveCount.ShouldBe(0);
        }

        _store.LeaseOf("tx-1").ShouldBe((_engine.Lease.Owner, 1L, _time.GetUtcNow() + LeaseDefaults.Duration));
    }

    [Fact]
    public async Task Lease_ReleaseAll_LetsAnotherInstanceClaimAtOnce()
    {
        await _engine.SubmitAsync(Checkout(), "fp-1", Ct);
        await ExpectCallAsync("order.action#1");

        await _engine.ReleaseAllAsync(Ct);

        _engine.ActiveCount.ShouldBe(0);
        var other = NewEngine();
        var claims = await _store.ClaimDueAsync(other.Lease, DateTimeOffset.MaxValue, 10, Ct);
        claims.ShouldBe([new LeaseClaim("tx-1", 2)]);
    }

    [Fact]
    public async Task WaitAsync_OnAnInstanceThatDoesNotDriveIt_AnswersWhenTheOwnerFinishes()
    {
        await _engine.SubmitAsync(Sequential("order"), "fp-1", Ct);
        var call = await ExpectCallAsync("order.action#1");
        var other = NewEngine();

        var waiting = other.WaitAsync("tx-1", TimeSpan.FromMinutes(1), Ct);
        await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, Ct);
        waiting.IsCompleted.ShouldBeFalse();
        call.Succeed();

        (await waiting).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
        other.ActiveCount.ShouldBe(0, "waiting does not take the transaction over");
    }

    /// <summary>Counts the timers created and not yet disposed.</summary>
    private sealed class CountingTimeProvider(ManualTimeProvider inner) : TimeProvider
    {
        private int _live;

        public int Live => Volatile.Read(ref _live);

        public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            Interlocked.Increment(ref _live);
            return new CountedTimer(inner.CreateTimer(callback, state, dueTime, period), this);
        }

        private sealed class CountedTimer(ITimer timer, CountingTimeProvider owner) : ITimer
        {
            private int _disposed;

            public bool Change(TimeSpan dueTime, TimeSpan period) => timer.Change(dueTime, period);

            public void Dispose()
            {
                if (Interlocked.Exchange(ref _disposed, 1) == 0)
                {
                    Interlocked.Decrement(ref owner._live);
                }

                timer.Dispose();
            }

            public ValueTask DisposeAsync()
            {
                Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }

    /// <summary>A clock whose timers fire <paramref name="early"/> before they are due (as coarse system timers can).</summary>
    private sealed class EarlyTimeProvider(ManualTimeProvider inner, TimeSpan early) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) =>
            new EarlyTimer(inner.CreateTimer(callback, state, Shift(dueTime), period), early);

        private TimeSpan Shift(TimeSpan due) => due == global::System.Threading.Timeout.InfiniteTimeSpan || due <= early ? due : due - early;

        private sealed class EarlyTimer(ITimer timer, TimeSpan early) : ITimer
        {
            public bool Change(TimeSpan dueTime, TimeSpan period) =>
                timer.Change(dueTime == global::System.Threading.Timeout.InfiniteTimeSpan || dueTime <= early ? dueTime : dueTime - early, period);

            public void Dispose() => timer.Dispose();

            public ValueTask DisposeAsync() => timer.DisposeAsync();
        }
    }
}
