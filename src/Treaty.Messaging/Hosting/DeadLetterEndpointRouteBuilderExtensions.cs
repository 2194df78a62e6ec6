using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Signatures;
using Treaty.Core.Security;

namespace Treaty.Messaging;

/// <summary>Maps this service's dead letters for the coordinator's dashboard (docs/messaging.md, "Dead letters over HTTP").</summary>
public static partial class DeadLetterEndpointRouteBuilderExtensions
{
    /// <summary>The path of the list; a replay is <c>POST {Path}/{id}/replay</c>.</summary>
    public const string Path = "/treaty/dead-letters";

    private const int MaxReplayBody = 4096;
    private const string ProblemBase = "https://treaty.dev/problems/";

    /// <summary>
    /// Maps <c>GET /treaty/dead-letters</c> (every dead letter of this service with its attempts)
    /// and <c>POST /treaty/dead-letters/{id}/replay</c> (put one back, <see cref="DeadLetters.ReplayAsync"/>).
    /// Only the coordinator may call them: every request must carry a <c>Treaty-Signature</c> made
    /// with a secret of the participant kit's callback verification
    /// (<see cref="TreatyCallbackVerificationExtensions.AddTreatyCallbackVerification"/>, the
    /// coordinator's <c>--callback-secret</c>) over <c>"{METHOD} {path}\n"</c> followed by the body,
    /// so a signature made for one request does not fit another. Unsigned or badly signed: 401.
    /// An unknown id: 404; a letter that is not dead (already put back, or replayed): 409.
    /// </summary>
    /// <exception cref="InvalidOperationException">
    /// Messaging is not registered, or no callback secret is configured: these endpoints are never open.
    /// </exception>
    public static RouteGroupBuilder MapTreatyDeadLetters(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        var services = endpoints.ServiceProvider;
        var deadLetters = services.GetService<DeadLetters>()
            ?? throw new InvalidOperationException("Call services.AddTreatyMessaging(...) before app.MapTreatyDeadLetters().");
        var secrets = services.GetService<IOptions<TreatyCallbackVerificationOptions>>()?.Value.Secrets
            .Select(Encoding.UTF8.GetBytes).ToArray() ?? [];
        if (secrets.Length == 0)
        {
            throw new InvalidOperationException(
                "MapTreatyDeadLetters needs the coordinator's callback secret, so only the coordinator can read and replay dead letters: " +
                "call services.AddTreatyCallbackVerification(o => o.Secret = ...) with the secret the coordinator has as --callback-secret.");
        }

        var verifier = new RequestVerifier(secrets, services.GetService<TimeProvider>() ?? TimeProvider.System);
        var logger = services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(DeadLetterEndpointRouteBuilderExtensions).FullName!);
        var group = endpoints.MapGroup(Path).ExcludeFromDescription();
        group.MapGet("", async (HttpContext http) =>
        {
            var (rejection, _) = await verifier.CheckAsync(http, logger);
            if (rejection is not null)
            {
                return rejection;
            }

            var letters = await deadLetters.ListAsync(http.RequestAborted);
            return Results.Json(new DeadLetterListWire([.. letters.Select(Wire)]), DeadLetterWireContext.Default.DeadLetterListWire);
        });
        group.MapPost("/{id}/replay", async (string id, HttpContext http) =>
        {
            var (rejection, body) = await verifier.CheckAsync(http, logger);
            if (rejection is not null)
            {
                return rejection;
            }

            string actor;
            try
            {
                actor = body.Length == 0 ? "unknown" : JsonSerializer.Deserialize(body, DeadLetterWireContext.Default.ReplayRequestWire)?.Actor ?? "unknown";
            }
            catch (JsonException)
            {
                return Problem(http, StatusCodes.Status400BadRequest, "malformed-json", "Malformed JSON", "The body must be {\"actor\": \"...\"} or empty.");
            }

            if (!long.TryParse(id, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var number)
                || await deadLetters.FindAsync(number, http.RequestAborted) is not { } letter)
            {
                return Problem(http, StatusCodes.Status404NotFound, "not-found", "Dead letter not found", $"This service has no dead letter '{Clip(id)}'.");
            }

            if (letter.Status != "dead" || !await deadLetters.ReplayAsync(number, http.RequestAborted))
            {
                return Problem(http, StatusCodes.Status409Conflict, "invalid-state", "Not a dead letter now",
                    $"Dead letter {number} is {(letter.Status == "dead" ? "being put back by another request" : letter.Status)}; only a dead one can be replayed.");
            }

            LogReplayAsked(logger, number, letter.MessageId, Clip(actor));
            return Results.Json(new ReplayAnswerWire(number, "replaying"), DeadLetterWireContext.Default.ReplayAnswerWire, statusCode: StatusCodes.Status202Accepted);
        });
        return group;
    }

    private static DeadLetterWire Wire(DeadLetter letter) => new(
        letter.Id, letter.MessageId, letter.Type, letter.CorrelationId, letter.Source, letter.Subscriber, letter.Error,
        letter.CreatedAt, letter.DeadLetteredAt, letter.Status, letter.ReplayedAt,
        [.. letter.Attempts.Select(a => new AttemptWire(a.Seq, a.At, a.Error, a.Archived))]);

    private static IResult Problem(HttpContext http, int status, string type, string title, string detail) =>
        Results.Problem(new ProblemDetails { Status = status, Type = ProblemBase + type, Title = title, Detail = detail, Instance = http.Request.Path.Value });

    private static string Clip(string text) => text.Length <= 100 ? text : text[..100] + "…";

    /// <summary>The bytes a dead-letter request's signature covers: method, path and body.</summary>
    internal static byte[] SignedContent(string method, string path, ReadOnlySpan<byte> body)
    {
        var head = Encoding.UTF8.GetBytes($"{method} {path}\n");
        var content = new byte[head.Length + body.Length];
        head.CopyTo(content, 0);
        body.CopyTo(content.AsSpan(head.Length));
        return content;
    }

    private sealed class RequestVerifier(byte[][] secrets, TimeProvider time)
    {
        public async Task<(IResult? Rejection, byte[] Body)> CheckAsync(HttpContext http, ILogger logger)
        {
            var request = http.Request;
            var buffer = new MemoryStream();
            var chunk = new byte[1024];
            int read;
            while ((read = await request.Body.ReadAsync(chunk, http.RequestAborted)) > 0)
            {
                buffer.Write(chunk, 0, read);
                if (buffer.Length > MaxReplayBody)
                {
                    return (Problem(http, StatusCodes.Status413PayloadTooLarge, "payload-too-large", "Request body too large", $"At most {MaxReplayBody} bytes."), []);
                }
            }

            var body = buffer.ToArray();
            // The path as the coordinator named it: a PathBase (the service mounted under a prefix) included.
            var content = SignedContent(request.Method, (request.PathBase + request.Path).Value ?? "/", body);
            var header = request.Headers[CallbackSignature.HeaderName].ToString();
            var check = SignatureCheck.Mismatch;
            foreach (var secret in secrets)
            {
                check = CallbackSignature.Verify(secret, header, content, time.GetUtcNow());
                if (check != SignatureCheck.Mismatch)
                {
                    break;
                }
            }

            if (check == SignatureCheck.Valid)
            {
                return (null, body);
            }

            LogRejected(logger, request.Method, request.Path.Value ?? "/", check.ToString().ToLowerInvariant());
            http.Response.Headers.WWWAuthenticate = CallbackSignature.HeaderName;
            return (Results.Problem(new ProblemDetails
            {
                Status = StatusCodes.Status401Unauthorized,
                Type = TreatyCallbackVerificationDefaults.ProblemType,
                Title = "Invalid signature",
                Detail = $"Dead letters answer only the coordinator: a {CallbackSignature.HeaderName} over \"METHOD path\\n\" and the body is required (signature {check.ToString().ToLowerInvariant()}).",
                Instance = request.Path.Value,
            }), []);
        }
    }

    [LoggerMessage(EventId = 4540, Level = LogLevel.Warning, Message = "Rejected a dead-letter request {Method} {Path}: signature {Reason}")]
    private static partial void LogRejected(ILogger logger, string method, string path, string reason);

    [LoggerMessage(EventId = 4541, Level = LogLevel.Information, Message = "Dead letter {Id} ({MessageId}) replay asked by the coordinator for operator {Actor}")]
    private static partial void LogReplayAsked(ILogger logger, long id, string messageId, string actor);
}

internal sealed record DeadLetterListWire(IReadOnlyList<DeadLetterWire> DeadLetters);

internal sealed record DeadLetterWire(
    long Id, string MessageId, string Type, string CorrelationId, string Source, string Consumer, string Error,
    DateTimeOffset CreatedAt, DateTimeOffset DeadLetteredAt, string Status, DateTimeOffset? ReplayedAt, IReadOnlyList<AttemptWire> Attempts);

internal sealed record AttemptWire(int Seq, DateTimeOffset At, string Error, bool Archived);

internal sealed record ReplayRequestWire(string? Actor);

internal sealed record ReplayAnswerWire(long Id, string Status);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(DeadLetterListWire))]
[JsonSerializable(typeof(ReplayRequestWire))]
[JsonSerializable(typeof(ReplayAnswerWire))]
internal sealed partial class DeadLetterWireContext : JsonSerializerContext;
