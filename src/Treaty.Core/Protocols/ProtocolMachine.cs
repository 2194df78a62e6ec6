using System.Collections.Immutable;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// A protocol as a pure state machine on the shared operation lifecycle of
/// <see cref="TransactionStep"/>. <see cref="Decide"/> is the same for every protocol: the
/// lifecycle applies the event (stale answers, retries, lost calls, operator retries), the
/// protocol's <see cref="Progress"/> moves the transaction as far as it can, and the lifecycle
/// builds the decision (wake-up, stuck mark). A protocol says only what is its own: its shape, how
/// each operation may end (<see cref="ObligationOf"/>), and what to do next.
/// </summary>
public abstract class ProtocolMachine : IProtocolMachine
{
    /// <inheritdoc />
    public abstract Protocol Protocol { get; }

    /// <inheritdoc />
    public abstract ProtocolShape Shape { get; }

    /// <summary>Whether a branch may be the pivot (sagas only).</summary>
    protected virtual bool SupportsPivot => false;

    /// <inheritdoc />
    public virtual IEnumerable<ValidationError> Validate(TransactionSpec spec)
    {
        var name = Protocol.ToWire();
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            var branch = spec.Branches[i];
            foreach (var op in branch.Urls.Keys)
            {
                if (!Shape.BranchOperations.Contains(op))
                {
                    yield return new($"branches[{i}].{op}", $"A {name} branch has no '{op}' operation; it has {string.Join(", ", Shape.BranchOperations)}.");
                }
            }

            foreach (var op in Shape.RequiredOperations)
            {
                if (branch.UrlOf(op) is null)
                {
                    yield return new($"branches[{i}].{op}", $"A {name} branch needs a '{op}' URL.");
                }
            }

            if (branch.Pivot && !SupportsPivot)
            {
                yield return new($"branches[{i}].pivot", $"Only a saga has a pivot; a {name} transaction decides its outcome for every branch at once.");
            }
        }

        foreach (var op in spec.Urls?.Keys ?? [])
        {
            if (!Shape.TransactionOperations.Contains(op))
            {
                yield return new(op, $"A {name} transaction has no '{op}' operation.");
            }
        }

        foreach (var op in Shape.TransactionOperations)
        {
            if (spec.UrlOf(op) is null)
            {
                yield return new(op, $"A {name} transaction needs a '{op}' URL.");
            }
        }
    }

    /// <inheritdoc />
    public TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now)
    {
        var branches = spec.Branches
            .Select(b => new BranchState(b.Name, [.. Shape.BranchOperations.Select(OpState.New)]))
            .ToImmutableArray();
        DateTimeOffset? deadline = spec.TimeoutMs is { } ms ? now.AddMilliseconds(ms) : null;
        return new TransactionState(spec, fingerprint, TransactionStatus.Pending, null, now, now, deadline, now, branches, 0)
        {
            Phase = Shape.Phases[0].Name,
            Ops = [.. Shape.TransactionOperations.Where(op => spec.UrlOf(op) is not null).Select(OpState.New)],
        };
    }

    /// <inheritdoc />
    public Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var step = new TransactionStep(this, state, context);
        if (!step.Apply(@event))
        {
            return new Decision(state, [], []);
        }

        if (!step.IsTerminal)
        {
            Progress(step);
        }

        return step.Build();
    }

    /// <inheritdoc />
    public abstract bool CanAbort(TransactionState state);

    /// <inheritdoc />
    public abstract BranchReading ReadBranch(TransactionState state, int branch);

    /// <summary>The transaction was accepted: by default it starts at once.</summary>
    protected internal virtual void OnSubmitted(TransactionStep step)
    {
        step.Log(JournalKinds.Submitted);
        step.SetStatus(TransactionStatus.Running);
    }

    /// <summary>After a restart, once every call that was in flight became an unknown outcome.</summary>
    protected internal virtual void OnResumed(TransactionStep step)
    {
    }

    /// <summary>An operator's abort that <see cref="CanAbort"/> allowed.</summary>
    protected internal abstract void OnAbortRequested(TransactionStep step, string reason);

    /// <summary>The two-phase message's submit; false (ignored) for every other protocol.</summary>
    protected internal virtual bool OnSenderCommitted(TransactionStep step) => false;

    /// <summary>An operation reached a final status (succeeded, failed, or exhausted).</summary>
    protected internal virtual void OnSettled(TransactionStep step, int? branch, OpState op)
    {
    }

    /// <summary>How operation <paramref name="op"/> of <paramref name="branch"/> (null: the
    /// transaction's own) may end, in <paramref name="state"/>.</summary>
    protected internal abstract Obligation ObligationOf(TransactionState state, int? branch, string op);

    /// <summary>Moves the transaction forward (or backward) as far as it can go now.</summary>
    protected internal abstract void Progress(TransactionStep step);
}
