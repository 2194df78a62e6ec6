using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;

namespace Treaty.Core.Tests.Protocols;

public sealed class ChoreographyMachineTests
{
    private static readonly TimeSpan Default = TimeSpan.FromSeconds(30);

    private static MachineRun Run()
    {
        var run = new MachineRun(new ChoreographyMachine(Default), ChoreographyMachine.SpecFor("order-1"));
        run.Submit();
        return run;
    }

    private static EventReported Event(string id, string type, string service, ChoreographyOutcome? outcome = null, long? timeoutMs = null, string? payload = null) =>
        new(new ChoreographyEvent(id, type, service, "order-1", null, payload, outcome, timeoutMs));

    [Fact]
    public void Decide_Events_RunningWithServicesAsBranchesAndEachEventJournaled()
    {
        var run = Run();

        run.Send(Event("m1", "order.created", "order", payload: """{"amount":25}"""));
        var second = run.Send(Event("m2", "payment.reserved", "payment"));

        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.State.Branches.Select(b => b.Name).ShouldBe(["order", "payment"]);
        run.State.Branches[0].Op("order.created").ResultJson.ShouldBe("""{"amount":25}""");
        second.Journal.ShouldHaveSingleItem().ShouldSatisfyAllConditions(
            j => j.Kind.ShouldBe(JournalKinds.Event),
            j => j.Branch.ShouldBe("payment"),
            j => j.Op.ShouldBe("payment.reserved"),
            j => j.Attempt.ShouldBe(2));
        second.Commands.ShouldBeEmpty();
        run.State.NextWakeAt.ShouldBe(run.Now + Default);
    }

    [Fact]
    public void Decide_DuplicateMessageId_Ignored()
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order"));
        var before = run.State;

        var again = run.Send(Event("m1", "order.created", "order"));

        again.Changed(before).ShouldBeFalse();
        again.Journal.ShouldBeEmpty();
        run.State.Branches.ShouldHaveSingleItem().Op("order.created").Attempts.ShouldBe(1);
    }

    [Theory]
    [InlineData(ChoreographyOutcome.Completed, TransactionStatus.Committed)]
    [InlineData(ChoreographyOutcome.Compensated, TransactionStatus.Aborted)]
    [InlineData(ChoreographyOutcome.Failed, TransactionStatus.Aborted)]
    public void Decide_TerminalEvent_EndsTheSaga(ChoreographyOutcome outcome, TransactionStatus expected)
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order"));

        var end = run.Send(Event("m2", "order.done", "order", outcome));

        run.State.Status.ShouldBe(expected);
        run.State.NextWakeAt.ShouldBeNull();
        end.Commands.ShouldBe([new Finish(expected)]);
        if (expected == TransactionStatus.Aborted)
        {
            run.State.Reason.ShouldNotBeNull().ShouldContain("order.done");
        }
    }

    [Fact]
    public void Decide_EventAfterTheEnd_RecordedButTheOutcomeStands()
    {
        var run = Run();
        run.Send(Event("m1", "order.cancelled", "order", ChoreographyOutcome.Compensated));

        var late = run.Send(Event("m0", "payment.reserved", "payment"));
        var lateCompletion = run.Send(Event("m9", "order.confirmed", "order", ChoreographyOutcome.Completed));

        run.State.Status.ShouldBe(TransactionStatus.Aborted);
        late.Journal.ShouldHaveSingleItem().Detail.ShouldNotBeNull().ShouldContain("after the saga ended");
        lateCompletion.Commands.ShouldBeEmpty();
        run.State.Choreography!.MessageIds.ShouldBe(["m1", "m0", "m9"]);
        run.State.Branches.Select(b => b.Name).ShouldBe(["order", "payment"]);
    }

    [Fact]
    public void Decide_ReorderedEvents_TheTerminalOneDecidesWhicheverComesFirst()
    {
        var run = Run();
        run.Send(Event("m3", "order.confirmed", "order", ChoreographyOutcome.Completed));
        run.Send(Event("m1", "order.created", "order"));
        run.Send(Event("m2", "payment.reserved", "payment"));

        run.State.Status.ShouldBe(TransactionStatus.Committed);
        run.State.Choreography!.MessageIds.Length.ShouldBe(3);
    }

    [Fact]
    public void Decide_NoEventWithinTheTimeout_StuckOnceWithTheAlert()
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order", timeoutMs: 5_000));
        run.State.NextWakeAt.ShouldBe(run.Now.AddSeconds(5));

        var early = run.FireTimerAt(run.Now.AddSeconds(4));
        early.Commands.ShouldBeEmpty();
        run.State.Stuck.ShouldBeFalse();

        var due = run.FireTimerAt(run.Now.AddSeconds(1));
        run.State.Stuck.ShouldBeTrue();
        run.State.StuckOn!.Op.ShouldBe(ChoreographyMachine.NextEvent);
        run.State.StuckOn.Branch.ShouldBe("order");
        run.State.StuckOn.LastError.ShouldNotBeNull().ShouldContain("no next event within its timeout");
        due.Commands.OfType<Alert>().ShouldHaveSingleItem().Kind.ShouldBe("stuck");
        due.Journal.Select(j => j.Kind).ShouldBe([JournalKinds.Stuck]);
        run.State.Status.ShouldBe(TransactionStatus.Running);

        run.State.NextWakeAt.ShouldBe(run.Now + ChoreographyMachine.StuckRecheck); // never "always due" for recovery
        var again = run.FireTimerAt(run.Now + ChoreographyMachine.StuckRecheck);
        again.Commands.ShouldBeEmpty(); // one alert per episode
        run.State.Stuck.ShouldBeTrue();
        run.State.NextWakeAt.ShouldBe(run.Now + ChoreographyMachine.StuckRecheck);
    }

    [Fact]
    public void Decide_NoEventAtAll_StuckAfterTheDefault()
    {
        var run = Run();
        run.FireTimerAt(run.Now + Default);
        run.State.Stuck.ShouldBeTrue();
    }

    [Fact]
    public void Decide_EventWhileStuck_ClearsTheMarkAndWaitsAgain()
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order", timeoutMs: 1_000));
        run.FireTimerAt(run.Now.AddSeconds(2));
        run.State.Stuck.ShouldBeTrue();

        var moved = run.Send(Event("m2", "payment.reserved", "payment", timeoutMs: 2_000));

        moved.Journal.ShouldHaveSingleItem().Detail.ShouldNotBeNull().ShouldContain("no longer stuck");
        run.State.Stuck.ShouldBeFalse();
        run.State.NextWakeAt.ShouldBe(run.Now.AddSeconds(2));
    }

    [Fact]
    public void Decide_OperatorRetry_ClearsStuckAndRestartsTheTimeout()
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order", timeoutMs: 1_000));
        run.FireTimerAt(run.Now.AddSeconds(2));

        run.Now = run.Now.AddSeconds(10);
        var retry = run.Send(new AdminRetry("ops"));

        run.State.Stuck.ShouldBeFalse();
        run.State.NextWakeAt.ShouldBe(run.Now.AddSeconds(1));
        retry.Journal.ShouldHaveSingleItem().Kind.ShouldBe(JournalKinds.OperatorRetry);
        retry.Commands.ShouldBeEmpty();

        run.FireTimerAt(run.Now.AddSeconds(1));
        run.State.Stuck.ShouldBeTrue();
    }

    [Fact]
    public void Decide_OperatorAbort_AbortedWithNothingToCall()
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order"));
        run.Machine.CanAbort(run.State).ShouldBeTrue();

        var abort = run.Send(new AdminAbort("ops", "customer gave up"));

        run.State.Status.ShouldBe(TransactionStatus.Aborted);
        run.State.Reason.ShouldNotBeNull().ShouldContain("customer gave up");
        abort.Commands.ShouldBe([new Finish(TransactionStatus.Aborted)]);
        abort.Journal.Select(j => j.Kind).ShouldBe([JournalKinds.OperatorAbort, JournalKinds.Aborted]);
        run.Machine.CanAbort(run.State).ShouldBeFalse();
    }

    [Fact]
    public void Decide_ResumedAfterTheTimeoutPassedWhileDown_Stuck()
    {
        var run = Run();
        run.Send(Event("m1", "order.created", "order", timeoutMs: 1_000));
        run.Now = run.Now.AddMinutes(5);

        var resumed = run.Send(new Resumed("coordinator-b", 3));

        run.State.Stuck.ShouldBeTrue();
        resumed.Journal.ShouldContain(j => j.Kind == JournalKinds.Resumed && j.Detail == "by coordinator-b at epoch 3");
    }

    [Fact]
    public void Decide_MoreEventsThanTheCap_TheRestIgnored()
    {
        var run = Run();
        for (var i = 0; i < TreatyDefaults.MaxChoreographyEvents; i++)
        {
            run.Send(Event($"m{i}", "tick", "clock"));
        }

        var over = run.Send(Event("one-too-many", "tick", "clock"));

        over.Journal.ShouldBeEmpty();
        run.State.Choreography!.MessageIds.Length.ShouldBe(TreatyDefaults.MaxChoreographyEvents);
    }

    [Fact]
    public void Validate_ASubmit_RefusedBecauseEventsCreateAChoreography()
    {
        new ChoreographyMachine().Validate(ChoreographyMachine.SpecFor("x")).ShouldHaveSingleItem().Field.ShouldBe("protocol");
    }
}
