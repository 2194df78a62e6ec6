using System.Collections.Immutable;
using Treaty.Core.Model;

namespace Treaty.Core.Engine;

/// <summary>What a pure decision may look at besides the state and the event.</summary>
public sealed record DecisionContext(DateTimeOffset Now, IRandomSource Random);

/// <summary>A field of a request that is not acceptable, and why.</summary>
public sealed record ValidationError(string Field, string Message);

/// <summary>One phase of a protocol: the operation it drives (retries, stuck detection).</summary>
/// <param name="Name">As shown by the API (<c>prepare</c>, <c>commit</c>, ...).</param>
/// <param name="Op">The operation the phase drives: its waiting calls are retried, and one that ran
/// out of attempts makes the transaction stuck.</param>
public sealed record ProtocolPhase(string Name, string Op);

/// <summary>What an absent <c>dependsOn</c> of a branch means.</summary>
public enum DependsOnDefault
{
    /// <summary>The branch before it in the request (a plain list is a sequence).</summary>
    PreviousBranch,

    /// <summary>None: every branch starts at once.</summary>
    None,
}

/// <summary>The shape of a protocol, as its requests and views need it.</summary>
/// <param name="BranchOperations">Operation names a branch may have URLs for, in protocol order.</param>
/// <param name="RequiredOperations">Operations every branch needs a URL for.</param>
/// <param name="TransactionOperations">Operations of the transaction itself (msg's <c>queryPrepared</c>).</param>
/// <param name="Phases">The phases, the first being where a transaction starts.</param>
/// <param name="DependsOn">What an absent <c>dependsOn</c> means.</param>
/// <param name="AllowsDependsOn">Whether branches may be ordered at all (2PC prepares everyone at once).</param>
public sealed record ProtocolShape(
    ImmutableArray<string> BranchOperations,
    ImmutableArray<string> RequiredOperations,
    ImmutableArray<string> TransactionOperations,
    ImmutableArray<ProtocolPhase> Phases,
    DependsOnDefault DependsOn,
    bool AllowsDependsOn)
{
    /// <summary>The phase named <paramref name="name"/>.</summary>
    public ProtocolPhase PhaseNamed(string name)
    {
        foreach (var phase in Phases)
        {
            if (phase.Name == name)
            {
                return phase;
            }
        }

        throw new ArgumentException($"No phase '{name}'.", nameof(name));
    }
}

/// <summary>How one branch reads in a view: a status word and, for voting protocols, its vote.</summary>
/// <param name="Status">pending, running, succeeded, failed, unknown, compensating, compensated,
/// prepared, committed, rolled-back, ... in the protocol's words.</param>
/// <param name="Vote"><c>yes</c>, <c>no</c>, or null (no vote, or not a voting protocol).</param>
public sealed record BranchReading(string Status, string? Vote);

/// <summary>One protocol as a pure state machine. Registered explicitly with the engine.</summary>
public interface IProtocolMachine
{
    Protocol Protocol { get; }

    /// <summary>Its operations, phases and request conventions.</summary>
    ProtocolShape Shape { get; }

    /// <summary>Protocol-specific checks of a structurally valid spec.</summary>
    IEnumerable<ValidationError> Validate(TransactionSpec spec);

    /// <summary>The state of a newly accepted transaction (before <see cref="Submitted"/>).</summary>
    TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now);

    /// <summary>The pure transition function.</summary>
    Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context);

    /// <summary>Whether an operator abort would be honoured now.</summary>
    bool CanAbort(TransactionState state);

    /// <summary>How branch <paramref name="branch"/> of <paramref name="state"/> reads.</summary>
    BranchReading ReadBranch(TransactionState state, int branch);
}
