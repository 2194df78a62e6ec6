using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>Settings of Treaty.Messaging in one service; defaults in <see cref="MessagingDefaults"/>.</summary>
public sealed class MessagingOptions
{
    /// <summary>This service's name: the source of what it publishes and the subscriber name of its inbox. Required.</summary>
    public string ServiceName { get; set; } = "";

    /// <summary>
    /// The service's own database, where the outbox, inbox, attempts and dead letters live with its
    /// state. When null, the <see cref="ParticipantDatabase"/> registered in the container is used.
    /// </summary>
    public ParticipantDatabase? Database { get; set; }

    /// <summary>Failed handlings of one message before it moves to the dead letters.</summary>
    public int MaxAttempts { get; set; } = MessagingDefaults.MaxAttempts;

    /// <summary>The first retry's delay; it doubles per attempt up to <see cref="MaxRetryDelay"/>.</summary>
    public TimeSpan RetryDelay { get; set; } = MessagingDefaults.RetryDelay;

    /// <summary>The longest delay between two tries (of the relay, or of a replay).</summary>
    public TimeSpan MaxRetryDelay { get; set; } = MessagingDefaults.MaxRetryDelay;

    /// <summary>How often the relay looks at the outbox when nothing nudged it (a publish in another process, say).</summary>
    public TimeSpan RelayPollInterval { get; set; } = MessagingDefaults.RelayPollInterval;

    /// <summary>The most outbox rows the relay hands to the transport at once.</summary>
    public int RelayBatchSize { get; set; } = MessagingDefaults.RelayBatchSize;

    /// <summary>
    /// The delay after the <paramref name="failures"/>-th failure in a row: the coordinator's own
    /// backoff (<see cref="Treaty.Core.Model.Backoff"/>: doubling from <see cref="RetryDelay"/>,
    /// capped at <see cref="MaxRetryDelay"/>, with equal jitter from <paramref name="random01"/>),
    /// so a burst of failures does not come back all at once.
    /// </summary>
    internal TimeSpan RetryBackoff(int failures, double random01) => failures < 1
        ? TimeSpan.Zero
        : Treaty.Core.Model.Backoff.Delay(failures, new Treaty.Core.Model.RetryPolicy(MaxAttempts, (long)RetryDelay.TotalMilliseconds, (long)MaxRetryDelay.TotalMilliseconds), random01);

    internal void Validate()
    {
        if (string.IsNullOrWhiteSpace(ServiceName))
        {
            throw new InvalidOperationException("Treaty.Messaging needs MessagingOptions.ServiceName.");
        }

        if (MaxAttempts < 1 || RelayBatchSize < 1 || RetryDelay <= TimeSpan.Zero || MaxRetryDelay < RetryDelay || RelayPollInterval <= TimeSpan.Zero)
        {
            throw new InvalidOperationException("Treaty.Messaging: MaxAttempts and RelayBatchSize must be at least 1, and the delays positive (MaxRetryDelay ≥ RetryDelay).");
        }
    }
}

/// <summary>The defaults of <see cref="MessagingOptions"/>.</summary>
public static class MessagingDefaults
{
    /// <summary>Five failed handlings, then the dead letters.</summary>
    public const int MaxAttempts = 5;

    /// <summary>The relay's batch.</summary>
    public const int RelayBatchSize = 100;

    /// <summary>200 ms, doubling.</summary>
    public static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(200);

    /// <summary>30 s.</summary>
    public static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(30);

    /// <summary>1 s.</summary>
    public static readonly TimeSpan RelayPollInterval = TimeSpan.FromSeconds(1);
}
