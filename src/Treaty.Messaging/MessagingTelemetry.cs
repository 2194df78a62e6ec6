using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace Treaty.Messaging;

/// <summary>
/// Treaty.Messaging's traces: a consumer span <c>treaty.consume {type}</c> around every handling,
/// a child of the publishing span named by the message's W3C <c>traceparent</c>, tagged with the
/// correlation id (the saga's gid). Collect them with <c>AddSource(TreatyMessagingTelemetry.ActivitySourceName)</c>.
/// </summary>
public static class TreatyMessagingTelemetry
{
    /// <summary>The name of the kit's <see cref="ActivitySource"/>.</summary>
    public const string ActivitySourceName = "Treaty.Messaging";

    internal static readonly ActivitySource Source = new(ActivitySourceName);

    internal static Activity? StartConsume(Transport.TransportMessage message, string subscriber)
    {
        if (!Source.HasListeners())
        {
            return null;
        }

        ActivityContext.TryParse(message.TraceParent, null, out var parent);
        var activity = Source.StartActivity("treaty.consume " + message.Type, ActivityKind.Consumer, parent);
        activity?.SetTag("messaging.operation.type", "process");
        activity?.SetTag("messaging.destination.name", message.Type);
        activity?.SetTag("messaging.message.id", message.MessageId);
        activity?.SetTag("messaging.consumer.group.name", subscriber);
        activity?.SetTag("treaty.gid", message.CorrelationId);
        return activity;
    }

    /// <summary>The W3C traceparent of the current span, if it has one.</summary>
    internal static string? CurrentTraceParent() =>
        Activity.Current is { IdFormat: ActivityIdFormat.W3C } current ? current.Id : null;

    /// <summary>
    /// The gid scope (<see cref="Treaty.Core.Diagnostics.GidLogScope"/>) of a message's correlation
    /// id, the saga's gid; nothing for a message without one.
    /// </summary>
    internal static IDisposable? BeginCorrelationScope(this ILogger logger, string? correlationId) =>
        string.IsNullOrEmpty(correlationId) ? null : Treaty.Core.Diagnostics.GidLogScopeExtensions.BeginGidScope(logger, correlationId);
}

/// <summary>Log messages of Treaty.Messaging (event ids 4501-4549).</summary>
internal static partial class MessagingLog
{
    [LoggerMessage(EventId = 4501, Level = LogLevel.Information, Message = "Messaging tables ready ({Dialect})")]
    public static partial void SchemaReady(ILogger logger, Treaty.AspNetCore.Data.SqlDialect dialect);

    [LoggerMessage(EventId = 4502, Level = LogLevel.Warning, Message = "The relay could not send {Failed} of {Read} outbox message(s) over {Transport}; each is tried again after its backoff (treaty_outbox.last_error)")]
    public static partial void SendFailed(ILogger logger, string transport, int failed, int read);

    [LoggerMessage(EventId = 4510, Level = LogLevel.Error, Message = "The relay failed to read or update the outbox (failure {Failures} in a row); trying again in {Delay}")]
    public static partial void RelayFailed(ILogger logger, Exception exception, int failures, TimeSpan delay);

    [LoggerMessage(EventId = 4503, Level = LogLevel.Debug, Message = "Duplicate delivery of {MessageId} ({Type}) to {Subscriber}: already handled, acknowledged")]
    public static partial void Duplicate(ILogger logger, string messageId, string type, string subscriber);

    [LoggerMessage(EventId = 4504, Level = LogLevel.Warning, Message = "Handling {MessageId} ({Type}) in {Subscriber} failed (attempt {Attempt} of {MaxAttempts}); rolled back, will retry")]
    public static partial void HandlerFailed(ILogger logger, Exception exception, string messageId, string type, string subscriber, int attempt, int maxAttempts);

    [LoggerMessage(EventId = 4505, Level = LogLevel.Error, Message = "Message {MessageId} ({Type}) dead-lettered in {Subscriber} after {Attempts} attempts")]
    public static partial void DeadLettered(ILogger logger, Exception exception, string messageId, string type, string subscriber, int attempts);

    [LoggerMessage(EventId = 4506, Level = LogLevel.Information, Message = "Dead letter {Id} ({MessageId}) put back for delivery by an operator")]
    public static partial void Replaying(ILogger logger, long id, string messageId);

    [LoggerMessage(EventId = 4507, Level = LogLevel.Information, Message = "Dead letter {Id} ({MessageId}) handled on replay")]
    public static partial void Replayed(ILogger logger, long id, string messageId);

    [LoggerMessage(EventId = 4508, Level = LogLevel.Warning, Message = "No subscriber is routed for {Type} ({MessageId}); the message is dropped")]
    public static partial void NoRoute(ILogger logger, string type, string messageId);

    [LoggerMessage(EventId = 4509, Level = LogLevel.Error, Message = "The replay worker failed; retrying")]
    public static partial void ReplayLoopFailed(ILogger logger, Exception exception);
}
