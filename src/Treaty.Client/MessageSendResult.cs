using Treaty.Core.Contracts;

namespace Treaty.Client;

/// <summary>How <see cref="MessageBuilder.ExecuteAsync"/> ended, its local transaction having committed.</summary>
public enum MessageSendStatus
{
    /// <summary>The coordinator accepted the submit: delivery has started (or ended).</summary>
    Submitted,

    /// <summary>
    /// The submit did not get through (coordinator unreachable, a timeout, a 5xx, or the call was
    /// cancelled). Nothing is lost: the coordinator asks the sender's <c>queryPrepared</c> once the
    /// message's timeout passes, finds the commit, and delivers. Retrying
    /// <see cref="TreatyClient.SubmitPreparedAsync"/> only makes that sooner.
    /// </summary>
    SubmitPending,

    /// <summary>
    /// The coordinator definitively refused the submit (409: the message had been aborted, e.g. by an
    /// operator while it was prepared, or a <c>queryPrepared</c> endpoint answered 4xx although the
    /// sender committed). The local change stands but the message will never be delivered: this
    /// needs attention.
    /// </summary>
    SubmitRefused,
}

/// <summary>The outcome of <see cref="MessageBuilder.ExecuteAsync"/>: its local transaction committed.</summary>
/// <param name="View">The coordinator's answer to the submit; when the submit did not succeed, the
/// message as registered (<c>prepared</c>).</param>
/// <param name="Status">Whether the submit got through.</param>
/// <param name="SubmitError">Why the submit did not get through; null when <see cref="Status"/> is
/// <see cref="MessageSendStatus.Submitted"/>.</param>
public sealed record MessageSendResult(TransactionView View, MessageSendStatus Status, Exception? SubmitError)
{
    /// <summary>The message's gid.</summary>
    public string Gid => View.Gid;
}
