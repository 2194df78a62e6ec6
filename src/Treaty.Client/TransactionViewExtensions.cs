using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Client;

/// <summary>Typed questions about a transaction's wire status.</summary>
public static class TransactionViewExtensions
{
    private static readonly string Committed = TransactionStatus.Committed.ToWire();
    private static readonly string Aborted = TransactionStatus.Aborted.ToWire();

    /// <summary>True when the transaction has ended (committed or aborted) and will not change again.</summary>
    public static bool IsTerminal(this TransactionView view) => IsTerminal(Status(view));

    /// <summary>True when every action of the transaction was applied.</summary>
    public static bool IsCommitted(this TransactionView view) => Status(view) == Committed;

    /// <summary>True when the transaction was rolled back (every applied action compensated).</summary>
    public static bool IsAborted(this TransactionView view) => Status(view) == Aborted;

    /// <summary>True when the transaction has ended (committed or aborted).</summary>
    public static bool IsTerminal(this TransactionSummaryView summary)
    {
        ArgumentNullException.ThrowIfNull(summary);
        return IsTerminal(summary.Status);
    }

    /// <summary>True when every action of the transaction was applied.</summary>
    public static bool IsCommitted(this TransactionSummaryView summary)
    {
        ArgumentNullException.ThrowIfNull(summary);
        return summary.Status == Committed;
    }

    /// <summary>True when the transaction was rolled back.</summary>
    public static bool IsAborted(this TransactionSummaryView summary)
    {
        ArgumentNullException.ThrowIfNull(summary);
        return summary.Status == Aborted;
    }

    private static string Status(TransactionView view)
    {
        ArgumentNullException.ThrowIfNull(view);
        return view.Status;
    }

    private static bool IsTerminal(string status) => status == Committed || status == Aborted;
}
