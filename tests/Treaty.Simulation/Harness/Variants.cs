using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>A machine that is another one but for what a known-bad variant changes.</summary>
internal abstract class MachineVariant(IProtocolMachine machine) : IProtocolMachine
{
    protected IProtocolMachine Inner => machine;

    public Protocol Protocol => machine.Protocol;

    public ProtocolShape Shape => machine.Shape;

    public IEnumerable<ValidationError> Validate(TransactionSpec spec) => machine.Validate(spec);

    public TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now) => machine.Create(spec, fingerprint, now);

    public virtual bool CanAbort(TransactionState state) => machine.CanAbort(state);

    public BranchReading ReadBranch(TransactionState state, int branch) => machine.ReadBranch(state, branch);

    public abstract Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context);
}

/// <summary>
/// Known-bad variant: a saga machine that, for one branch, marks a compensation succeeded without
/// ever calling it. The simulation must report an atomicity violation.
/// </summary>
internal sealed class SkipCompensationMachine(IProtocolMachine inner, string branch) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state, @event, context);
        var skipped = decision.Commands.OfType<InvokeOperation>()
            .FirstOrDefault(c => c.BranchName == branch && c.Op == ProtocolNames.Compensate);
        if (skipped is null)
        {
            return decision;
        }

        var faked = Inner.Decide(decision.Next, new OperationCompleted(skipped.Branch, skipped.Op, skipped.Attempt, BranchOutcome.Success(200, "{}")), context);
        return new Decision(
            faked.Next,
            [.. decision.Commands.Where(c => !ReferenceEquals(c, skipped)), .. faked.Commands],
            [.. decision.Journal, .. faked.Journal]);
    }
}

/// <summary>
/// Known-bad variant: the engine bug where a timer that fired a hair before the operation was due
/// changed nothing and was never re-armed, so the retry never happened (until a coordinator
/// restart). The engine now re-arms on a no-op decision; this machine brings the bug back from
/// outside Treaty.Core: on such an early wake-up it answers a decision whose only change is that
/// nothing is due any more, so the engine persists it and disarms the timer. The simulation must
/// report a liveness violation.
/// </summary>
internal sealed class LoseEarlyWakeUpMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state, @event, context);
        return @event is TimerFired && !decision.Changed(state) && state.NextWakeAt > context.Now
            ? new Decision(state with { NextWakeAt = null }, [], [])
            : decision;
    }
}

/// <summary>Traces what the engine reports.</summary>
internal sealed class TraceObserver(SimScheduler scheduler) : IEngineObserver
{
    public void Submitted(TransactionState state)
    {
    }

    public void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
    }

    public void Finished(TransactionState state) =>
        scheduler.Trace.Add(scheduler, SimNode.Here.Name, $"finished {state.Gid} {state.Status.ToWire()} {state.Reason}");

    public int StuckAlerts { get; private set; }

    public void Alert(TransactionState state, Alert alert)
    {
        StuckAlerts++;
        scheduler.Trace.Add(scheduler, SimNode.Here.Name, $"ALERT {alert.Kind}: {alert.Message}");
    }
}
