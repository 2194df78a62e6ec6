using System.Globalization;
using System.Security.Claims;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>
/// Acts on endpoints marked with <see cref="IdempotencyKeyAttribute"/>: claims the key, runs the
/// handler inside a participant transaction while buffering its response, and stores that
/// response in the same transaction as the handler's writes; repeats are replayed, conflicts
/// answered 409. Endpoints without the metadata pass straight through.
/// </summary>
internal sealed partial class IdempotencyMiddleware(
    IdempotencyStore store,
    IOptions<IdempotencyOptions> options,
    TimeProvider time,
    IHostApplicationLifetime lifetime,
    ILogger<IdempotencyMiddleware> logger)
{
    private const string ProblemContentType = "application/problem+json";

    public async Task InvokeAsync(HttpContext context, RequestDelegate next)
    {
        var metadata = context.GetEndpoint()?.Metadata.GetMetadata<IdempotencyKeyAttribute>();
        if (metadata is null)
        {
            await next(context);
            return;
        }

        var settings = options.Value;
        var check = IdempotencyRules.CheckKey(context.Request.Headers[settings.HeaderName], settings.MaxKeyLength, out var key);
        if (check == KeyCheck.Missing && !metadata.Required)
        {
            await next(context);
            return;
        }

        if (check != KeyCheck.Valid)
        {
            await WriteInvalidKeyAsync(context, settings, check);
            return;
        }

        var cancellationToken = context.RequestAborted;
        await store.EnsureSchemaAsync(cancellationToken);
        var body = await ReadBodyAsync(context.Request, cancellationToken);
        var fingerprint = IdempotencyFingerprint.Compute(
            context.Request.Method,
            (context.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText,
            context.Request.PathBase.Add(context.Request.Path).Value + context.Request.QueryString.Value,
            context.Request.ContentType,
            body);
        var scope = context.User.FindFirst(ClaimTypes.NameIdentifier)?.Value ?? string.Empty;

        var claim = await store.ClaimAsync(scope, key, fingerprint, cancellationToken);
        switch (claim.Decision.Action)
        {
            case IdempotencyAction.Replay:
                LogReplayed(logger, key);
                await WriteReplayAsync(context, claim.Existing!.Response!);
                return;
            case IdempotencyAction.Mismatch:
                LogMismatch(logger, key);
                await WriteProblemAsync(
                    context,
                    StatusCodes.Status409Conflict,
                    IdempotencyProblemTypes.KeyMismatch,
                    "Idempotency key reused",
                    $"The {settings.HeaderName} was already used for a different request (method, route or body). Use a new key for a new request.");
                return;
            case IdempotencyAction.InFlight:
                await WriteInFlightAsync(context, settings, claim.Decision.RetryAfter);
                return;
            default:
                await RunAsync(context, next, scope, key, claim.Owner!);
                return;
        }
    }

    private async Task RunAsync(HttpContext context, RequestDelegate next, string scope, string key, string owner)
    {
        var originalBody = context.Features.GetRequiredFeature<IHttpResponseBodyFeature>();
        var originalLifetime = context.Features.Get<IHttpRequestLifetimeFeature>();
        using var buffer = new MemoryStream();
        var bufferedBody = new StreamResponseBodyFeature(buffer, originalBody);
        await using var scopeOfWork = new HandlerScope();
        try
        {
            // the handler's writes and the stored response commit or roll back together
            await scopeOfWork.BeginAsync(store, context.RequestAborted);
            context.Features.Set(new ParticipantTransactionFeature(scopeOfWork.Transaction));
            context.Features.Set<IHttpResponseBodyFeature>(bufferedBody);

            // Once the handler runs, it runs to the end even if the client leaves: its result is
            // stored for the client's retry. Cancelled by the request's own token, a handler (or
            // Results.Json, which swallows that cancellation) could leave a truncated response that
            // would then be replayed. Only the host's shutdown cancels it.
            context.Features.Set<IHttpRequestLifetimeFeature>(new ShieldedRequestLifetime(originalLifetime, lifetime.ApplicationStopping));
            await next(context);

            // What the handler left in the body's PipeWriter, which the server would flush at the
            // end, belongs to the response: into the buffer before it is stored and sent.
            await bufferedBody.CompleteAsync();
        }
        catch (Exception exception)
        {
            RestoreFeatures(context, originalBody, originalLifetime);
            await scopeOfWork.EndAsync(); // rolls back the handler's writes
            await ReleaseAsync(scope, key, owner);
            if (lifetime.ApplicationStopping.IsCancellationRequested)
            {
                LogStoppedByShutdown(logger, key);
            }
            else
            {
                LogHandlerFailed(logger, exception, key);
            }

            if (context.Response.HasStarted)
            {
                throw;
            }

            context.Response.Clear();
            await WriteProblemAsync(
                context,
                StatusCodes.Status500InternalServerError,
                ProblemTypes.Internal,
                "The request failed",
                $"Nothing was saved and the {options.Value.HeaderName} was released: retry with the same key.");
            return;
        }
        finally
        {
            RestoreFeatures(context, originalBody, originalLifetime);
        }

        var response = new StoredResponse(
            context.Response.StatusCode,
            context.Response.ContentType,
            CollectHeaders(context.Response.Headers, options.Value.ReplayedHeaders),
            buffer.ToArray());

        if (IdempotencyRules.Classify(response.StatusCode) == ResponseDisposition.Release)
        {
            await scopeOfWork.EndAsync();
            await ReleaseAsync(scope, key, owner);
            LogReleased(logger, key, response.StatusCode);
            await SendAsync(context, response.Body);
            return;
        }

        // Not the request's token: once the handler has finished, its work is kept even if the
        // client has gone — the response is lost, not the work; the client's retry replays it.
        bool stored;
        try
        {
            stored = await store.CompleteAsync(scopeOfWork.Transaction, scope, key, owner, response, CancellationToken.None);
            if (stored)
            {
                await scopeOfWork.Transaction.CommitAsync(CancellationToken.None);
            }

            await scopeOfWork.EndAsync();
        }
        catch (Exception exception)
        {
            // the commit's outcome may be unknown; the release only deletes an uncompleted claim
            LogHandlerFailed(logger, exception, key);
            await scopeOfWork.EndAsync();
            await ReleaseAsync(scope, key, owner);
            context.Response.Clear();
            await WriteProblemAsync(context, StatusCodes.Status500InternalServerError, ProblemTypes.Internal, "The request failed", "Storing the result failed; retry with the same key.");
            return;
        }

        if (!stored)
        {
            // our lock expired and another request took the key over: our writes were rolled back
            LogClaimLost(logger, key);
            context.Response.Clear();
            var current = await store.FindAsync(scope, key, CancellationToken.None);
            var now = time.GetUtcNow();
            if (current?.Response is { } winner && current.ExpiresAt > now)
            {
                await WriteReplayAsync(context, winner);
            }
            else
            {
                await WriteInFlightAsync(context, options.Value, IdempotencyRules.RetryAfter(current?.LockedUntil ?? now, now));
            }

            return;
        }

        await SendAsync(context, response.Body);
    }

    private static void RestoreFeatures(HttpContext context, IHttpResponseBodyFeature body, IHttpRequestLifetimeFeature? requestLifetime)
    {
        context.Features.Set(body);
        context.Features.Set(requestLifetime);
        context.Features.Set<ParticipantTransactionFeature>(null);
    }

    private async Task ReleaseAsync(string scope, string key, string owner)
    {
        try
        {
            await store.ReleaseAsync(scope, key, owner, CancellationToken.None);
        }
        catch (Exception exception) when (exception is System.Data.Common.DbException or InvalidOperationException or TimeoutException)
        {
            // the key stays in flight until its lock times out; a retry then takes it over
            LogReleaseFailed(logger, exception, key);
        }
    }

    private static Dictionary<string, string>? CollectHeaders(IHeaderDictionary headers, ICollection<string> names)
    {
        Dictionary<string, string>? kept = null;
        foreach (var name in names)
        {
            if (headers.TryGetValue(name, out var value) && value.Count > 0)
            {
                kept ??= new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
                kept[name] = value.ToString();
            }
        }

        return kept;
    }

    private static async Task<byte[]> ReadBodyAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        // buffered so the handler can read the body after the fingerprint did
        request.EnableBuffering();
        using var copy = new MemoryStream();
        await request.Body.CopyToAsync(copy, cancellationToken);
        request.Body.Position = 0;
        return copy.ToArray();
    }

    private static async Task SendAsync(HttpContext context, byte[] body)
    {
        context.Response.ContentLength = body.Length;
        if (body.Length > 0)
        {
            try
            {
                await context.Response.Body.WriteAsync(body, context.RequestAborted);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // the client left; its retry with the same key gets the stored response
            }
        }
    }

    private static Task WriteReplayAsync(HttpContext context, StoredResponse response)
    {
        context.Response.StatusCode = response.StatusCode;
        if (response.ContentType is not null)
        {
            context.Response.ContentType = response.ContentType;
        }

        if (response.Headers is not null)
        {
            foreach (var (name, value) in response.Headers)
            {
                context.Response.Headers[name] = value;
            }
        }

        context.Response.Headers[IdempotencyDefaults.ReplayedHeaderName] = "true";
        return SendAsync(context, response.Body);
    }

    private Task WriteInFlightAsync(HttpContext context, IdempotencyOptions settings, TimeSpan retryAfter)
    {
        var seconds = ((long)retryAfter.TotalSeconds).ToString(CultureInfo.InvariantCulture);
        LogInFlight(logger, settings.HeaderName, seconds);
        context.Response.Headers.RetryAfter = seconds;
        return WriteProblemAsync(
            context,
            StatusCodes.Status409Conflict,
            IdempotencyProblemTypes.KeyInFlight,
            "A request with this idempotency key is in progress",
            $"A request with the same {settings.HeaderName} is still running. Retry after {seconds} seconds to get its result.");
    }

    private static Task WriteInvalidKeyAsync(HttpContext context, IdempotencyOptions settings, KeyCheck check)
    {
        var header = settings.HeaderName;
        var message = check switch
        {
            KeyCheck.Missing => $"The {header} header is required on this endpoint.",
            KeyCheck.Empty => $"The {header} header must not be empty.",
            KeyCheck.TooLong => $"The {header} header must be at most {settings.MaxKeyLength} characters.",
            KeyCheck.Multiple => $"Send exactly one {header} header.",
            _ => $"The {header} header must be visible ASCII characters.",
        };
        return WriteProblemAsync(
            context,
            StatusCodes.Status400BadRequest,
            IdempotencyProblemTypes.InvalidKey,
            "The request is not valid",
            $"{header}: {message}",
            new Dictionary<string, string[]>(StringComparer.Ordinal) { [header] = [message] });
    }

    private static Task WriteProblemAsync(HttpContext context, int status, string type, string title, string detail, IReadOnlyDictionary<string, string[]>? errors = null)
    {
        context.Response.StatusCode = status;
        return context.Response.WriteAsJsonAsync(
            new ProblemView(type, title, status, detail, context.Request.Path.Value, errors),
            TreatyJsonContext.Default.ProblemView,
            ProblemContentType,
            context.RequestAborted);
    }

    [LoggerMessage(EventId = 4101, Level = LogLevel.Debug, Message = "Idempotency key {Key}: replayed the stored response")]
    private static partial void LogReplayed(ILogger logger, string key);

    [LoggerMessage(EventId = 4102, Level = LogLevel.Information, Message = "Idempotency key {Key} reused for a different request: 409")]
    private static partial void LogMismatch(ILogger logger, string key);

    [LoggerMessage(EventId = 4104, Level = LogLevel.Debug, Message = "{Header} in flight: 409, retry after {Seconds} s")]
    private static partial void LogInFlight(ILogger logger, string header, string seconds);

    [LoggerMessage(EventId = 4105, Level = LogLevel.Error, Message = "Idempotency key {Key}: the handler failed; its writes were rolled back and the key released")]
    private static partial void LogHandlerFailed(ILogger logger, Exception exception, string key);

    [LoggerMessage(EventId = 4106, Level = LogLevel.Information, Message = "Idempotency key {Key}: the host stopped before the handler finished; its writes were rolled back and the key released")]
    private static partial void LogStoppedByShutdown(ILogger logger, string key);

    [LoggerMessage(EventId = 4107, Level = LogLevel.Information, Message = "Idempotency key {Key}: status {StatusCode} is not final; the writes were rolled back and the key released")]
    private static partial void LogReleased(ILogger logger, string key, int statusCode);

    [LoggerMessage(EventId = 4108, Level = LogLevel.Warning, Message = "Idempotency key {Key}: the lock expired and another request took the key over; this request's writes were rolled back")]
    private static partial void LogClaimLost(ILogger logger, string key);

    [LoggerMessage(EventId = 4109, Level = LogLevel.Warning, Message = "Idempotency key {Key} could not be released; it stays in flight until its lock times out")]
    private static partial void LogReleaseFailed(ILogger logger, Exception exception, string key);
}

/// <summary>
/// The request lifetime an idempotent handler sees: <see cref="RequestAborted"/> fires on host
/// shutdown, not when the client disconnects; <see cref="Abort"/> still aborts the connection.
/// </summary>
internal sealed class ShieldedRequestLifetime(IHttpRequestLifetimeFeature? inner, CancellationToken stopping) : IHttpRequestLifetimeFeature
{
    public CancellationToken RequestAborted
    {
        get => stopping;
        set { } // a handler cannot re-arm the client's token through us
    }

    public void Abort() => inner?.Abort();
}

/// <summary>
/// The handler's transaction; ending it rolls back whatever was not committed (and, on SQLite,
/// gives up the database's write turn). Ending twice is harmless.
/// </summary>
internal sealed class HandlerScope : IAsyncDisposable
{
    private ParticipantTransaction? _transaction;

    public ParticipantTransaction Transaction => _transaction ?? throw new InvalidOperationException("The handler's transaction is not open.");

    public async Task BeginAsync(IdempotencyStore store, CancellationToken cancellationToken)
    {
        _transaction = await store.Database.BeginAsync(cancellationToken);
    }

    public async Task EndAsync()
    {
        var transaction = _transaction;
        _transaction = null;
        if (transaction is not null)
        {
            await transaction.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync() => await EndAsync();
}

/// <summary>Carries the participant transaction of an idempotent request to <see cref="IdempotencyHttpContextExtensions.GetParticipantTransaction"/>.</summary>
internal sealed class ParticipantTransactionFeature(ParticipantTransaction transaction)
{
    public ParticipantTransaction Transaction { get; } = transaction;
}
