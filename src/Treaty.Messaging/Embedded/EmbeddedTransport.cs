using System.Globalization;
using System.Net.Http.Headers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Embedded;

/// <summary>Where the embedded transport sends each message type: the base URLs of its subscribers.</summary>
public sealed class EmbeddedRoutes
{
    private readonly Dictionary<string, List<Uri>> _routes = new(StringComparer.Ordinal);

    /// <summary>Sends messages of <paramref name="type"/> to the service at <paramref name="subscriberBaseUrl"/> (it maps <c>MapTreatyMessaging</c>).</summary>
    public EmbeddedRoutes Route(string type, Uri subscriberBaseUrl)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        ArgumentNullException.ThrowIfNull(subscriberBaseUrl);
        if (!_routes.TryGetValue(type, out var urls))
        {
            _routes[type] = urls = [];
        }

        urls.Add(subscriberBaseUrl);
        return this;
    }

    internal IReadOnlyList<Uri> For(string type) => _routes.TryGetValue(type, out var urls) ? urls : [];
}

/// <summary>
/// The embedded transport: no broker. The sender's outbox is the durable queue; SendAsync POSTs
/// each message to every subscriber routed for its type and succeeds only when each answered 2xx,
/// which the receiving side does only after its inbox committed the message (or dead-lettered it).
/// Anything else throws, so the relay keeps the rows and sends again.
/// </summary>
internal sealed class EmbeddedTransport(HttpClient http, EmbeddedRoutes routes, EmbeddedDispatcher dispatcher, ILogger<EmbeddedTransport>? logger = null, bool ownsHttpClient = false) : IMessageTransport
{
    public const string Path = "/treaty/messages";
    private readonly ILogger _logger = logger ?? NullLogger<EmbeddedTransport>.Instance;
    private bool _disposed;

    public string Name => "embedded";

    public EmbeddedDispatcher Dispatcher => dispatcher;

    public async Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (var message in messages)
        {
            var subscribers = routes.For(message.Type);
            if (subscribers.Count == 0)
            {
                using (_logger.BeginCorrelationScope(message.CorrelationId))
                {
                    MessagingLog.NoRoute(_logger, message.Type, message.MessageId);
                }

                continue;
            }

            // Subscribers of one message in parallel; a failure anywhere fails the batch, and the
            // resend reaches those that already have it too (their inboxes drop the copy).
            await Task.WhenAll(subscribers.Select(subscriber => PostAsync(subscriber, message, cancellationToken)));
        }
    }

    private async Task PostAsync(Uri subscriber, TransportMessage message, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(subscriber, Path));
        request.Content = new ReadOnlyMemoryContent(message.Body);
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        EmbeddedHeaders.Write(request, message);
        using var response = await http.SendAsync(request, cancellationToken);
        if (!response.IsSuccessStatusCode)
        {
            throw new HttpRequestException(
                $"{subscriber} answered {(int)response.StatusCode} to {message.Type} {message.MessageId}", null, response.StatusCode);
        }
    }

    public Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Task.FromResult(dispatcher.Add(subscription, handler));
    }

    public ValueTask DisposeAsync()
    {
        if (!_disposed)
        {
            _disposed = true;
            if (ownsHttpClient)
            {
                http.Dispose();
            }
        }

        return ValueTask.CompletedTask;
    }
}

/// <summary>The message's metadata travels in headers; the body is the payload as published.</summary>
internal static class EmbeddedHeaders
{
    public const string MessageId = "Treaty-Message-Id";
    public const string Type = "Treaty-Message-Type";
    public const string CorrelationId = "Treaty-Correlation-Id";
    public const string Source = "Treaty-Source";
    public const string CreatedAt = "Treaty-Created-At";
    public const string TraceParent = "traceparent";

    public static void Write(HttpRequestMessage request, TransportMessage message)
    {
        request.Headers.Add(MessageId, message.MessageId);
        request.Headers.Add(Type, message.Type);
        request.Headers.Add(CorrelationId, Uri.EscapeDataString(message.CorrelationId));
        request.Headers.Add(Source, Uri.EscapeDataString(message.Source));
        request.Headers.Add(CreatedAt, message.CreatedAt.ToString("O", CultureInfo.InvariantCulture));
        if (message.TraceParent is not null)
        {
            request.Headers.TryAddWithoutValidation(TraceParent, message.TraceParent);
        }
    }

    public static async Task<TransportMessage?> ReadAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        var headers = request.Headers;
        string? Get(string name) => headers.TryGetValue(name, out var value) && !string.IsNullOrEmpty(value) ? value.ToString() : null;
        var id = Get(MessageId);
        var type = Get(Type);
        var correlation = Get(CorrelationId);
        var source = Get(Source);
        if (id is null || type is null || correlation is null || source is null
            || !DateTimeOffset.TryParse(Get(CreatedAt), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var createdAt))
        {
            return null;
        }

        using var buffer = new MemoryStream();
        await request.Body.CopyToAsync(buffer, cancellationToken);
        return new TransportMessage(id, type, Uri.UnescapeDataString(correlation), buffer.ToArray(), Get(TraceParent), Uri.UnescapeDataString(source), createdAt);
    }
}

/// <summary>The receiving side of the embedded transport: the handlers subscribed in this process, by type.</summary>
internal sealed class EmbeddedDispatcher
{
    private readonly Lock _lock = new();
    private readonly List<(Subscription Subscription, MessageHandler Handler)> _handlers = [];

    public IAsyncDisposable Add(Subscription subscription, MessageHandler handler)
    {
        var entry = (subscription, handler);
        lock (_lock)
        {
            _handlers.Add(entry);
        }

        return new Unsubscribe(() =>
        {
            lock (_lock)
            {
                _handlers.Remove(entry);
            }
        });
    }

    /// <summary>Runs every handler subscribed to the message's type; 200 when all handled or dead-lettered it, else 503 (nobody subscribed yet, or a retry).</summary>
    public async Task<IResult> DispatchAsync(TransportMessage message, TimeSpan retryAfter, CancellationToken cancellationToken)
    {
        List<MessageHandler> handlers;
        lock (_lock)
        {
            handlers = [.. _handlers.Where(entry => entry.Subscription.Types.Contains(message.Type, StringComparer.Ordinal)).Select(entry => entry.Handler)];
        }

        var retry = handlers.Count == 0;
        foreach (var handler in handlers)
        {
            if (await handler(message, cancellationToken) == DeliveryOutcome.Retry)
            {
                retry = true;
            }
        }

        return retry ? new RetryLater(retryAfter) : Results.Ok();
    }

    private sealed class Unsubscribe(Action action) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            action();
            return ValueTask.CompletedTask;
        }
    }

    private sealed class RetryLater(TimeSpan after) : IResult
    {
        public Task ExecuteAsync(HttpContext httpContext)
        {
            httpContext.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
            httpContext.Response.Headers.RetryAfter = Math.Max(1, (int)Math.Ceiling(after.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
            return Task.CompletedTask;
        }
    }
}
