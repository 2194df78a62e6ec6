using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;
using static Treaty.Core.Tests.Support.SagaSpecs;

namespace Treaty.Core.Tests.Sagas;

public sealed class SagaMachineTests
{
    private const string Action = ProtocolNames.Action;
    private const string Compensate = ProtocolNames.Compensate;

    // FixedRandom(0.5) with equal jitter: half + 0.5 * half = 0.75 of the exponential delay.
    private static readonly RetryPolicy Policy = new(MaxAttempts: 3, InitialDelayMs: 100, MaxDelayMs: 1000);

    [Fact]
    public void Decide_Submitted_SequentialSaga_InvokesOnlyTheFirstAction()
    {
        var run = new SagaRun(Sequential("order", "payment", "stock"));

        var decision = run.Submit();

        decision.Invocations().ShouldBe(["order.action#1"]);
        var invoke = decision.Commands.OfType<InvokeOperation>().Single();
        invoke.Url.ShouldBe("http://svc.test/order/action");
        invoke.Branch.ShouldBe(0);
        invoke.Timeout.ShouldBe(TimeSpan.FromMilliseconds(TreatyDefaults.BranchTimeoutMs));
        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.Op("order").Status.ShouldBe(OpStatus.InFlight);
        run.Op("payment").Status.ShouldBe(OpStatus.NotStarted);
        decision.Journal.Select(j => j.Kind).ShouldBe([JournalKinds.Submitted, JournalKinds.AttemptStarted]);
    }

    [Fact]
    public void Decide_SequentialHappyPath_InvokesEachActionInOrderOneAtATimeThenCommits()
    {
        var run = new SagaRun(Sequential("order", "payment", "stock"));
        var invoked = new List<string>();

        invoked.AddRange(run.Submit().Invocations());
        invoked.AddRange(run.Succeed("order").Invocations());
        invoked.Count.ShouldBe(2);
        invoked.AddRange(run.Succeed("payment").Invocations());
        var last = run.Succeed("stock");

        invoked.ShouldBe(["order.action#1", "payment.action#1", "stock.action#1"]);
        last.Invocations().ShouldBeEmpty();
        last.Commands.ShouldContain(new Finish(TransactionStatus.Committed));
        run.State.Status.ShouldBe(TransactionStatus.Committed);
        run.State.NextWakeAt.ShouldBeNull();
        run.State.Stuck.ShouldBeFalse();
        run.State.Branches.ShouldAllBe(b => b.Op(Action).Status == OpStatus.Succeeded && b.Op(Compensate).Status == OpStatus.NotStarted);
        run.Op("stock").ResultJson.ShouldBe("""{"ok":true}""");
    }

    [Fact]
    public void Decide_DagSubmitted_StartsEveryRootTogether()
    {
        var run = new SagaRun(Saga([Branch("order"), Branch("payment"), Branch("ship", ["order", "payment"])]));

        run.Submit().Invocations().ShouldBe(["order.action#1", "payment.action#1"]);
    }

    [Fact]
    public void Decide_DagJoin_WaitsForEveryDependency()
    {
        var run = new SagaRun(Saga([Branch("order"), Branch("payment"), Branch("ship", ["order", "payment"])]));
        run.Submit();

        var first = run.Succeed("payment");
        first.Invocations().ShouldBeEmpty();
        run.Op("ship").Status.ShouldBe(OpStatus.NotStarted);

        run.Succeed("order").Invocations().ShouldBe(["ship.action#1"]);
        run.Succeed("ship").Commands.ShouldContain(new Finish(TransactionStatus.Committed));
    }

    [Fact]
    public void Decide_ActionFailsDefinitively_CompensatesEarlierStepsInReverse()
    {
        var run = new SagaRun(Sequential("order", "payment", "stock"));
        run.Submit();
        run.Succeed("order");
        run.Succeed("payment");

        var failed = run.Fail("stock");

        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.Reason.ShouldNotBeNull().ShouldContain("stock.action failed");
        failed.Invocations().ShouldBe(["payment.compensate#1"]);
        run.Succeed("payment", Compensate).Invocations().ShouldBe(["order.compensate#1"]);
        var done = run.Succeed("order", Compensate);

        done.Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        run.State.Status.ShouldBe(TransactionStatus.Aborted);
        run.State.NextWakeAt.ShouldBeNull();
        run.Op("stock").Status.ShouldBe(OpStatus.Failed);
        run.Op("stock").LastStatusCode.ShouldBe(409);
    }

    [Fact]
    public void Decide_ActionFailsDefinitively_IsNotCompensatedItself()
    {
        var run = new SagaRun(Sequential("order", "payment"));
        run.Submit();

        var failed = run.Fail("order");

        // Nothing was applied anywhere: the saga aborts at once without calling any compensation.
        failed.Invocations().ShouldBeEmpty();
        failed.Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        run.Op("order", Compensate).Status.ShouldBe(OpStatus.NotStarted);
        run.Op("payment").Status.ShouldBe(OpStatus.NotStarted);
    }

    [Fact]
    public void Decide_ActionUnknownUntilAttemptsRunOut_IsCompensatedBeforeEarlierSteps()
    {
        var run = new SagaRun(Sequential(Policy with { MaxAttempts = 2 }, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        run.Unknown("payment").Invocations().ShouldBeEmpty();
        run.FireTimer().Invocations().ShouldBe(["payment.action#2"]);

        var exhausted = run.Unknown("payment");

        run.Op("payment").Status.ShouldBe(OpStatus.Exhausted);
        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.Reason.ShouldNotBeNull().ShouldContain("payment.action ran out of attempts");
        // It may have been applied, so it is undone, and before what it depends on.
        exhausted.Invocations().ShouldBe(["payment.compensate#1"]);
        run.Succeed("payment", Compensate).Invocations().ShouldBe(["order.compensate#1"]);
        run.Succeed("order", Compensate).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
    }

    [Fact]
    public void Decide_DagAbort_CompensatesABranchOnlyAfterItsDependentsAreCompensated()
    {
        // order -> (payment, stock) -> ship; ship fails definitively.
        var run = new SagaRun(Saga([
            Branch("order"),
            Branch("payment", ["order"]),
            Branch("stock", ["order"]),
            Branch("ship", ["payment", "stock"]),
        ]));
        run.Submit();
        run.Succeed("order").Invocations().ShouldBe(["payment.action#1", "stock.action#1"]);
        run.Succeed("payment");
        run.Succeed("stock").Invocations().ShouldBe(["ship.action#1"]);

        run.Fail("ship").Invocations().ShouldBe(["payment.compensate#1", "stock.compensate#1"]);
        run.Succeed("stock", Compensate).Invocations().ShouldBeEmpty(); // order still waits for payment's
        run.Op("order", Compensate).Status.ShouldBe(OpStatus.NotStarted);
        run.Succeed("payment", Compensate).Invocations().ShouldBe(["order.compensate#1"]);
        run.Succeed("order", Compensate).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        run.Op("ship", Compensate).Attempts.ShouldBe(0);
    }

    [Fact]
    public void Decide_ParallelBranchInFlightWhenAnotherFails_WaitsForItsAnswerBeforeCompensating()
    {
        var run = new SagaRun(Saga([Branch("payment"), Branch("stock")]));
        run.Submit();

        run.Fail("stock").Invocations().ShouldBeEmpty();
        run.State.Status.ShouldBe(TransactionStatus.Aborting);

        run.Succeed("payment").Invocations().ShouldBe(["payment.compensate#1"]);
        run.Op("payment").Status.ShouldBe(OpStatus.Succeeded);
    }

    [Fact]
    public void Decide_ParallelBranchInFlightWhenAnotherFails_ItsDefinitiveFailureNeedsNoCompensation()
    {
        var run = new SagaRun(Saga([Branch("payment"), Branch("stock")]));
        run.Submit();
        run.Fail("stock");

        var done = run.Fail("payment");

        done.Invocations().ShouldBeEmpty();
        done.Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
    }

    [Fact]
    public void Decide_AbortingWhileAnActionIsInFlight_StillWakesAtItsWatchdog()
    {
        // If that call's answer were lost, nothing else would ever look at the transaction again.
        var run = new SagaRun(Saga([Branch("payment"), Branch("stock")]));
        run.Submit();

        run.Fail("stock");

        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        var watchdog = run.Op("payment").LastAttemptAt!.Value + TimeSpan.FromMilliseconds(2 * TreatyDefaults.BranchTimeoutMs) + TimeSpan.FromSeconds(1);
        run.State.NextWakeAt.ShouldBe(watchdog);

        var fired = run.FireTimer();

        run.Op("payment").Status.ShouldBe(OpStatus.Waiting);
        fired.Invocations().ShouldBe(["payment.compensate#1"]); // it may have been applied
    }

    [Fact]
    public void Decide_UnknownOutcome_SchedulesRetryAfterBackoffDelayInNextWakeAt()
    {
        var run = new SagaRun(Sequential(Policy with { MaxAttempts = 5 }, "order"));
        run.Submit();

        run.Unknown("order").Invocations().ShouldBeEmpty();

        var first = Backoff.Delay(1, Policy, 0.5);
        first.ShouldBe(TimeSpan.FromMilliseconds(75));
        run.Op("order").Status.ShouldBe(OpStatus.Waiting);
        run.Op("order").NextAttemptAt.ShouldBe(T0 + first);
        run.Op("order").LastStatusCode.ShouldBe(503);
        run.State.NextWakeAt.ShouldBe(T0 + first);

        run.FireTimer().Invocations().ShouldBe(["order.action#2"]);
        var retriedAt = run.Now;
        run.Unknown("order");

        var second = Backoff.Delay(2, Policy, 0.5);
        second.ShouldBe(TimeSpan.FromMilliseconds(150));
        run.Op("order").NextAttemptAt.ShouldBe(retriedAt + second);
        run.State.NextWakeAt.ShouldBe(retriedAt + second);
    }

    [Fact]
    public void Decide_TimerFired_StartsOnlyTheRetriesThatAreDue()
    {
        var run = new SagaRun(Saga([Branch("payment"), Branch("stock")], retry: Policy));
        run.Submit();
        run.Unknown("payment"); // due at T0 + 75ms
        run.Now = T0 + TimeSpan.FromMilliseconds(50);
        run.Unknown("stock"); // due at T0 + 125ms
        run.State.NextWakeAt.ShouldBe(T0 + TimeSpan.FromMilliseconds(75));

        run.FireTimerAt(T0 + TimeSpan.FromMilliseconds(75)).Invocations().ShouldBe(["payment.action#2"]);
        run.Op("stock").Status.ShouldBe(OpStatus.Waiting);
        run.State.NextWakeAt.ShouldBe(T0 + TimeSpan.FromMilliseconds(125));

        var before = run.State;
        run.FireTimerAt(T0 + TimeSpan.FromMilliseconds(100)).ShouldChangeNothing(before);

        run.FireTimerAt(T0 + TimeSpan.FromMilliseconds(125)).Invocations().ShouldBe(["stock.action#2"]);
    }

    [Fact]
    public void Decide_TimerFiredAfterWatchdog_PresumesTheInFlightCallLostAndRetries()
    {
        var run = new SagaRun(Saga([Branch("order", timeoutMs: 1000)], retry: Policy));
        run.Submit();
        var watchdog = T0 + TimeSpan.FromSeconds(3); // 2 x the call timeout + 1 s
        run.State.NextWakeAt.ShouldBe(watchdog);

        var early = run.State;
        run.FireTimerAt(watchdog - TimeSpan.FromMilliseconds(1)).ShouldChangeNothing(early);

        var fired = run.FireTimerAt(watchdog);

        fired.Journal.ShouldContain(j => j.Kind == JournalKinds.AttemptUnknown && j.Attempt == 1);
        run.Op("order").Status.ShouldBe(OpStatus.Waiting);
        run.Op("order").NextAttemptAt.ShouldBe(watchdog + TimeSpan.FromMilliseconds(75));
    }

    [Fact]
    public void Decide_DuplicateCompletion_IsIgnoredAndChangesNothing()
    {
        var run = new SagaRun(Sequential("order", "payment"));
        run.Submit();
        run.Succeed("order");
        var before = run.State;

        run.Succeed("order", attempt: 1).ShouldChangeNothing(before);
        run.Fail("order").ShouldChangeNothing(before);
        run.Succeed("order", Compensate, attempt: 1).ShouldChangeNothing(before);
        run.Send(new OperationCompleted(7, Action, 1, BranchOutcome.Success(200, null))).ShouldChangeNothing(before);
        run.Send(new OperationCompleted(-1, Action, 1, BranchOutcome.Success(200, null))).ShouldChangeNothing(before);
        run.Send(new OperationCompleted(0, "confirm", 1, BranchOutcome.Success(200, null))).ShouldChangeNothing(before);
    }

    [Fact]
    public void Decide_StaleCompletionOfAnEarlierAttempt_IsIgnoredAndChangesNothing()
    {
        var run = new SagaRun(Sequential(Policy, "order", "payment"));
        run.Submit();
        run.Unknown("order");
        run.FireTimer().Invocations().ShouldBe(["order.action#2"]);
        var before = run.State;

        // The first attempt's answer arrives late: attempt 2 is the one in flight.
        run.Succeed("order", attempt: 1).ShouldChangeNothing(before);
        run.Succeed("order", attempt: 2).Invocations().ShouldBe(["payment.action#1"]); // the current attempt counts
    }

    [Fact]
    public void Decide_Resumed_TurnsInFlightCallsIntoRetries()
    {
        var run = new SagaRun(Saga([Branch("payment"), Branch("stock")], retry: Policy));
        run.Submit();
        run.Succeed("stock");

        var resumed = run.Send(new Resumed("coordinator-b", 2));

        resumed.Invocations().ShouldBeEmpty();
        resumed.Journal.ShouldContain(j => j.Kind == JournalKinds.Resumed && j.Detail == "by coordinator-b at epoch 2");
        resumed.Journal.ShouldContain(j => j.Kind == JournalKinds.AttemptUnknown && j.Branch == "payment" && j.Attempt == 1);
        run.Op("payment").Status.ShouldBe(OpStatus.Waiting);
        run.Op("payment").NextAttemptAt.ShouldBe(T0 + TimeSpan.FromMilliseconds(75));
        run.Op("stock").Status.ShouldBe(OpStatus.Succeeded);
        run.State.NextWakeAt.ShouldBe(T0 + TimeSpan.FromMilliseconds(75));

        run.FireTimer().Invocations().ShouldBe(["payment.action#2"]);
        run.Succeed("payment").Commands.ShouldContain(new Finish(TransactionStatus.Committed));
    }

    [Fact]
    public void Decide_ForwardStepToATentativeAction_DoesNotWaitForItsWrite_TheSubmitRetriesAndThePivotDo()
    {
        var run = new SagaRun(Saga([Branch("order"), Branch("payment", ["order"]), Branch("charge", ["payment"], pivot: true), Branch("ship", ["charge"], compensate: false)], retry: Policy));
        run.Submit().WriteAhead.ShouldBeTrue("the first calls follow the submit");

        var step = run.Succeed("order");
        step.Invocations().ShouldBe(["payment.action#1"]);
        step.WriteAhead.ShouldBeFalse("a forward step to a tentative action");

        run.Unknown("payment").WriteAhead.ShouldBeTrue();
        var retry = run.FireTimer();
        retry.Invocations().ShouldBe(["payment.action#2"]);
        retry.WriteAhead.ShouldBeTrue("a retry");

        var pivot = run.Succeed("payment");
        pivot.Invocations().ShouldBe(["charge.action#1"]);
        pivot.WriteAhead.ShouldBeTrue("the pivot");

        var afterPivot = run.Succeed("charge");
        afterPivot.Invocations().ShouldBe(["ship.action#1"]);
        afterPivot.WriteAhead.ShouldBeTrue("after the commit decision");
    }

    [Fact]
    public void Decide_Resumed_MarksMaybeCalledWhatAForwardStepCouldHaveSent_AndAnAbortCompensatesIt()
    {
        var run = new SagaRun(Saga([Branch("order"), Branch("payment", ["order"]), Branch("stock", ["order"]), Branch("ship", ["payment", "stock"])], retry: Policy));
        run.Submit();

        var resumed = run.Send(new Resumed());

        // Order was in flight: its success could have started payment and stock before that write landed.
        run.Op("payment").MaybeCalled.ShouldBeTrue();
        run.Op("stock").MaybeCalled.ShouldBeTrue();
        run.Op("ship").MaybeCalled.ShouldBeFalse("two steps away");
        resumed.Journal.Count(j => j.Kind == JournalKinds.AttemptUnknown && j.Op == Action).ShouldBe(3);
        resumed.Invocations().ShouldBeEmpty();

        // Exhausted, so abort: the maybe-called actions are compensated too (before order, which they depend on).
        run.FireTimer();
        run.Unknown("order");
        run.FireTimer();
        var abort = run.Unknown("order");
        abort.Invocations().ShouldBe(["payment.compensate#1", "stock.compensate#1"]);
        run.Succeed("payment", Compensate);
        run.Succeed("stock", Compensate).Invocations().ShouldBe(["order.compensate#1"]);
        run.Succeed("order", Compensate).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
    }

    [Fact]
    public void Decide_MaybeCalledActionStartedAgain_IsAnOrdinaryCall()
    {
        var run = new SagaRun(Sequential(Policy, "order", "payment"));
        run.Submit();
        run.Send(new Resumed());
        run.Op("payment").MaybeCalled.ShouldBeTrue();

        run.FireTimer().Invocations().ShouldBe(["order.action#2"]);
        run.Succeed("order").Invocations().ShouldBe(["payment.action#1"]);
        run.Op("payment").MaybeCalled.ShouldBeFalse();
        run.Fail("payment").Invocations().ShouldBe(["order.compensate#1"]); // a definitive refusal: nothing of payment to undo
    }

    [Fact]
    public void Decide_ResumedWhileCompensating_RetriesTheCompensation()
    {
        var run = new SagaRun(Sequential(Policy, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        run.Fail("payment").Invocations().ShouldBe(["order.compensate#1"]);

        run.Send(new Resumed()).Invocations().ShouldBeEmpty();

        run.Op("order", Compensate).Status.ShouldBe(OpStatus.Waiting);
        run.FireTimer().Invocations().ShouldBe(["order.compensate#2"]);
    }

    [Fact]
    public void Decide_AfterPivotSucceeded_DefinitiveFailureIsRetriedNotCompensated()
    {
        var run = new SagaRun(Saga(
            [Branch("payment"), Branch("charge", ["payment"], pivot: true), Branch("ship", ["charge"], compensate: false)],
            retry: Policy));
        run.Submit();
        run.Succeed("payment");
        run.Succeed("charge").Invocations().ShouldBe(["ship.action#1"]);

        var failed = run.Fail("ship");

        failed.Invocations().ShouldBeEmpty();
        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.Op("ship").Status.ShouldBe(OpStatus.Waiting);
        run.Op("payment", Compensate).Status.ShouldBe(OpStatus.NotStarted);
        run.FireTimer().Invocations().ShouldBe(["ship.action#2"]);
        run.Succeed("ship").Commands.ShouldContain(new Finish(TransactionStatus.Committed));
    }

    [Fact]
    public void Decide_AfterPivotSucceeded_ExhaustedStepIsStuckNotAbandoned()
    {
        var run = new SagaRun(Saga(
            [Branch("charge", pivot: true, compensate: false), Branch("ship", ["charge"], compensate: false)],
            retry: Policy with { MaxAttempts = 1 }));
        run.Submit();
        run.Succeed("charge");

        var exhausted = run.Unknown("ship");

        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.State.Stuck.ShouldBeTrue();
        exhausted.Commands.OfType<Alert>().ShouldHaveSingleItem();
        run.Op("ship").Status.ShouldBe(OpStatus.Waiting);
        run.Op("ship").NextAttemptAt.ShouldBe(T0 + TimeSpan.FromMilliseconds(Policy.MaxDelayMs));
    }

    [Fact]
    public void Decide_PivotFailsDefinitively_CompensatesTheStepsBeforeIt()
    {
        var run = new SagaRun(Saga([Branch("payment"), Branch("charge", ["payment"], pivot: true, compensate: false)]));
        run.Submit();
        run.Succeed("payment");

        run.Fail("charge").Invocations().ShouldBe(["payment.compensate#1"]);
    }

    [Fact]
    public void Decide_TimeoutBeforePivotStarted_Aborts()
    {
        var run = new SagaRun(Saga(
            [Branch("payment"), Branch("charge", ["payment"], pivot: true), Branch("ship", ["charge"])],
            timeoutMs: 1000));
        run.Submit();
        run.State.Deadline.ShouldBe(T0 + TimeSpan.FromSeconds(1));
        run.State.NextWakeAt.ShouldBe(T0 + TimeSpan.FromSeconds(1));

        var timedOut = run.FireTimer();

        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.Reason.ShouldBe("transaction timed out");
        timedOut.Invocations().ShouldBeEmpty(); // payment's answer is awaited first
        run.Succeed("payment").Invocations().ShouldBe(["payment.compensate#1"]);
        run.Op("charge").Status.ShouldBe(OpStatus.NotStarted);
        run.Succeed("payment", Compensate).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
    }

    [Fact]
    public void Decide_TimeoutAfterPivotStarted_DoesNotAbort()
    {
        var run = new SagaRun(Saga(
            [Branch("payment"), Branch("charge", ["payment"], pivot: true), Branch("ship", ["charge"])],
            timeoutMs: 1000));
        run.Submit();
        run.Now = T0 + TimeSpan.FromMilliseconds(500);
        run.Succeed("payment").Invocations().ShouldBe(["charge.action#1"]);
        run.State.NextWakeAt.ShouldNotBe(run.State.Deadline); // only the call's watchdog is left

        var late = run.FireTimerAt(T0 + TimeSpan.FromSeconds(2));

        late.Invocations().ShouldBeEmpty();
        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.Succeed("charge").Invocations().ShouldBe(["ship.action#1"]);
        run.Succeed("ship").Commands.ShouldContain(new Finish(TransactionStatus.Committed));
    }

    [Fact]
    public void Decide_TimeoutWithoutPivot_AbortsAndCompensatesWhatSucceeded()
    {
        var run = new SagaRun(Saga([Branch("order"), Branch("payment", ["order"])], timeoutMs: 1000));
        run.Submit();
        run.Succeed("order");

        run.FireTimerAt(T0 + TimeSpan.FromSeconds(5)).Invocations().ShouldBeEmpty();
        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.Unknown("payment").Invocations().ShouldBe(["payment.compensate#1"]);
    }

    [Fact]
    public void Decide_CompensationExhaustsAttempts_MarksStuckAlertsAndKeepsRetryingAtTheCap()
    {
        var run = new SagaRun(Sequential(Policy with { MaxAttempts = 2 }, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        run.Fail("payment");
        run.Unknown("order", Compensate);
        run.State.Stuck.ShouldBeFalse();
        run.FireTimer().Invocations().ShouldBe(["order.compensate#2"]);

        var exhausted = run.Unknown("order", Compensate);

        run.State.Stuck.ShouldBeTrue();
        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.StuckOn.ShouldBe(new StuckCause("order", Compensate, 2, 503, "service unavailable"));
        run.State.StuckOn!.ToString().ShouldBe("order.compensate failed 2 times, last: service unavailable");
        run.State.Reason.ShouldBe("payment.action failed: insufficient funds"); // why it aborts, kept apart from why it is stuck
        exhausted.Commands.OfType<Alert>().ShouldHaveSingleItem().Kind.ShouldBe("stuck");
        exhausted.Journal.ShouldContain(j => j.Kind == JournalKinds.Stuck);
        var capped = run.Now + TimeSpan.FromMilliseconds(Policy.MaxDelayMs);
        run.Op("order", Compensate).NextAttemptAt.ShouldBe(capped);
        run.State.NextWakeAt.ShouldBe(capped);

        run.FireTimer().Invocations().ShouldBe(["order.compensate#3"]);
        run.State.Stuck.ShouldBeTrue(); // still out of attempts while the next one is on its way
        var again = run.Unknown("order", Compensate);
        again.Commands.OfType<Alert>().ShouldBeEmpty(); // alerted once, not on every retry
        run.State.Stuck.ShouldBeTrue();
        run.State.NextWakeAt.ShouldBe(run.Now + TimeSpan.FromMilliseconds(Policy.MaxDelayMs));

        run.FireTimer().Invocations().ShouldBe(["order.compensate#4"]);
        var done = run.Succeed("order", Compensate);
        done.Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        run.State.Stuck.ShouldBeFalse();
        run.State.StuckOn.ShouldBeNull();
        run.State.Reason.ShouldBe("payment.action failed: insufficient funds");
    }

    [Fact]
    public void Decide_CompensationFailsDefinitively_IsRetriedAnyway()
    {
        var run = new SagaRun(Sequential(Policy, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        run.Fail("payment");

        run.Fail("order", Compensate).Invocations().ShouldBeEmpty();

        run.Op("order", Compensate).Status.ShouldBe(OpStatus.Waiting);
        run.FireTimer().Invocations().ShouldBe(["order.compensate#2"]);
    }

    [Fact]
    public void Decide_AdminRetry_ClearsStuckRestartsTheBudgetAndInvokesAtOnce()
    {
        var run = new SagaRun(Sequential(Policy with { MaxAttempts = 1 }, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        run.Fail("payment");
        run.Unknown("order", Compensate);
        run.State.Stuck.ShouldBeTrue();
        run.Now += TimeSpan.FromMilliseconds(10); // long before the capped retry is due

        var retried = run.Send(new AdminRetry("alice"));

        retried.Invocations().ShouldBe(["order.compensate#2"]);
        retried.Journal.ShouldContain(j => j.Kind == JournalKinds.OperatorRetry && j.Detail == "by alice");
        run.State.Stuck.ShouldBeFalse();
        run.Op("order", Compensate).BudgetBase.ShouldBe(1);
        run.Op("order", Compensate).AttemptsInBudget.ShouldBe(1);

        run.Unknown("order", Compensate).Commands.OfType<Alert>().ShouldHaveSingleItem(); // a fresh budget of 1, spent again
        run.State.Stuck.ShouldBeTrue();
    }

    [Fact]
    public void Decide_AdminRetryWithAFreshBudget_RetriesAtTheInitialDelay()
    {
        var run = new SagaRun(Sequential(Policy with { MaxAttempts = 2 }, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        run.Fail("payment");
        run.Unknown("order", Compensate);
        run.FireTimer();
        run.Unknown("order", Compensate);
        run.State.Stuck.ShouldBeTrue();

        run.Send(new AdminRetry("ops")).Invocations().ShouldBe(["order.compensate#3"]);
        var at = run.Now;
        run.Unknown("order", Compensate);

        run.State.Stuck.ShouldBeFalse();
        run.Op("order", Compensate).NextAttemptAt.ShouldBe(at + Backoff.Delay(1, Policy, 0.5));
    }

    [Fact]
    public void Decide_AdminAbortBeforePivot_IsHonoured()
    {
        var machine = new SagaMachine();
        var run = new SagaRun(Saga([Branch("payment"), Branch("charge", ["payment"], pivot: true)]));
        run.Submit();
        machine.CanAbort(run.State).ShouldBeTrue();

        var aborted = run.Send(new AdminAbort("alice", "customer called"));

        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.Reason.ShouldBe("aborted by operator alice: customer called");
        aborted.Journal.ShouldContain(j => j.Kind == JournalKinds.OperatorAbort);
        run.Succeed("payment").Invocations().ShouldBe(["payment.compensate#1"]);
        run.Op("charge").Status.ShouldBe(OpStatus.NotStarted);
        machine.CanAbort(run.State).ShouldBeFalse();
    }

    [Fact]
    public void Decide_AdminAbortAfterPivotStarted_IsRefusedAndChangesNothing()
    {
        var machine = new SagaMachine();
        var run = new SagaRun(Saga([Branch("payment"), Branch("charge", ["payment"], pivot: true)]));
        run.Submit();
        run.Succeed("payment").Invocations().ShouldBe(["charge.action#1"]);
        var before = run.State;

        machine.CanAbort(before).ShouldBeFalse();
        run.Send(new AdminAbort("alice", null)).ShouldChangeNothing(before);
    }

    [Fact]
    public void Decide_AdminAbortWhileAborting_ChangesNothing()
    {
        var run = new SagaRun(Saga([Branch("payment"), Branch("stock")]));
        run.Submit();
        run.Fail("stock");
        var before = run.State;

        run.Send(new AdminAbort("alice", null)).ShouldChangeNothing(before);
    }

    [Fact]
    public void Decide_SubmittedTwice_SecondIsIgnored()
    {
        var run = new SagaRun(Sequential("order"));
        run.Submit();
        var before = run.State;

        run.Submit().ShouldChangeNothing(before);
    }

    public static TheoryData<string> TerminalStatuses => new() { "committed", "aborted" };

    [Theory]
    [MemberData(nameof(TerminalStatuses))]
    public void Decide_TerminalState_IgnoresEveryEvent(string status)
    {
        var run = new SagaRun(Sequential(Policy, "order", "payment"));
        run.Submit();
        run.Succeed("order");
        if (status == "committed")
        {
            run.Succeed("payment");
        }
        else
        {
            run.Fail("payment");
            run.Succeed("order", Compensate);
        }

        run.State.Status.ToWire().ShouldBe(status);
        var terminal = run.State;
        TransactionEvent[] events =
        [
            new Submitted(),
            new Resumed(),
            new TimerFired(),
            new AdminRetry("alice"),
            new AdminAbort("alice", "why not"),
            new OperationCompleted(0, Action, 1, BranchOutcome.Failure(409, "late")),
            new OperationCompleted(1, Action, 1, BranchOutcome.Unknown(503, "late")),
            new OperationCompleted(0, Compensate, 1, BranchOutcome.Success(200, null)),
            new OperationCompleted(1, Compensate, 1, BranchOutcome.Success(200, null)),
        ];
        foreach (var @event in events)
        {
            run.Now += TimeSpan.FromHours(1);
            run.Send(@event).ShouldChangeNothing(terminal);
        }
    }

    [Fact]
    public void Decide_EveryInvocation_CarriesTheOperationsAttemptCount()
    {
        var run = new SagaRun(Sequential(Policy with { MaxAttempts = 4 }, "order"));
        run.Submit();
        for (var attempt = 2; attempt <= 4; attempt++)
        {
            run.Unknown("order");
            var invoke = run.FireTimer().Commands.OfType<InvokeOperation>().ShouldHaveSingleItem();
            invoke.Attempt.ShouldBe(attempt);
            run.Op("order").Attempts.ShouldBe(attempt);
        }
    }
}
