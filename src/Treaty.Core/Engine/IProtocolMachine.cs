using System.Collections.Immutable;
using Treaty.Core.Model;

namespace Treaty.Core.Engine;

/// <summary>What a pure decision may look at besides the state and the event.</summary>
public sealed record DecisionContext(DateTimeOffset Now, IRandomSource Random);

/// <summary>A field of a request that is not acceptable, and why.</summary>
public sealed record ValidationError(string Field, string Message);

/// <summary>One protocol as a pure state machine. Registered explicitly with the engine.</summary>
public interface IProtocolMachine
{
    Protocol Protocol { get; }

    /// <summary>The operation names a branch of this protocol may have URLs for.</summary>
    ImmutableArray<string> Operations { get; }

    /// <summary>Protocol-specific checks of a structurally valid spec.</summary>
    IEnumerable<ValidationError> Validate(TransactionSpec spec);

    /// <summary>The state of a newly accepted transaction (before <see cref="Submitted"/>).</summary>
    TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now);

    /// <summary>The pure transition function.</summary>
    Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context);

    /// <summary>Whether an operator abort would be honoured now.</summary>
    bool CanAbort(TransactionState state);
}
