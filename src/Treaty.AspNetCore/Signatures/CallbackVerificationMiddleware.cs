using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.Logging;
using Treaty.Core.Diagnostics;
using Treaty.Core.Security;

namespace Treaty.AspNetCore.Signatures;

/// <summary>Marks an endpoint whose callers must sign (see <see cref="TreatyCallbackVerificationExtensions.RequireTreatySignature{TBuilder}"/>).</summary>
internal sealed class TreatySignatureRequiredMetadata
{
    public static readonly TreatySignatureRequiredMetadata Instance = new();
}

/// <summary>
/// Verifies <c>Treaty-Signature</c> on endpoints marked with <see cref="TreatySignatureRequiredMetadata"/>
/// before they run; a request that fails is answered 401 problem+json and never reaches the handler.
/// </summary>
internal sealed partial class CallbackVerificationMiddleware(RequestDelegate next, CallbackVerifier verifier, ILogger<CallbackVerificationMiddleware> logger)
{
    // A first guess at the buffer size, not trusted beyond this: Content-Length comes from the caller.
    private const int MaxInitialCapacity = 64 * 1024;

    public async Task InvokeAsync(HttpContext context)
    {
        if (!verifier.Enabled || context.GetEndpoint()?.Metadata.GetMetadata<TreatySignatureRequiredMetadata>() is null)
        {
            await next(context);
            return;
        }

        // The MAC covers the exact bytes, so the whole body is read first; the handler then reads
        // the same bytes from memory. Kestrel's MaxRequestBodySize still bounds what is read.
        var request = context.Request;
        var capacity = request.ContentLength is { } length and > 0 ? (int)Math.Min(length, MaxInitialCapacity) : 0;
        var buffer = new MemoryStream(capacity);
        await request.Body.CopyToAsync(buffer, context.RequestAborted);

        var header = request.Headers[CallbackSignature.HeaderName].ToString();
        var check = verifier.Verify(header, buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
        if (check != SignatureCheck.Valid)
        {
            // The gid is the caller's claim (the signature failed), but it is what the line names.
            var gid = request.Headers["Treaty-Gid"].ToString();
            using (gid.Length > 0 ? logger.BeginGidScope(gid) : null)
            {
                LogRejected(logger, request.Path.Value ?? "/", gid, Reason(check));
            }

            await RejectAsync(context, check);
            return;
        }

        buffer.Position = 0;
        request.Body = buffer;
        context.Response.RegisterForDispose(buffer);
        await next(context);
    }

    private static Task RejectAsync(HttpContext context, SignatureCheck check)
    {
        context.Response.Headers.WWWAuthenticate = CallbackSignature.HeaderName;
        // The detail names what is wrong, never a secret, the expected MAC or the header's value.
        var detail = check switch
        {
            SignatureCheck.Missing => $"Signature missing: the request has no {CallbackSignature.HeaderName} header.",
            SignatureCheck.Malformed => $"Signature malformed: {CallbackSignature.HeaderName} must be t=<unix seconds>,v1=<hex HMAC-SHA256>.",
            SignatureCheck.Expired => $"Signature expired: its timestamp is more than {CallbackSignature.Tolerance.TotalMinutes:0} minutes from this participant's clock.",
            _ => "Signature mismatch: it does not match the request body under any accepted secret.",
        };
        var problem = new ProblemDetails
        {
            Status = StatusCodes.Status401Unauthorized,
            Type = TreatyCallbackVerificationDefaults.ProblemType,
            Title = "Invalid signature",
            Detail = detail,
            Instance = context.Request.Path.Value,
        };
        return Results.Problem(problem).ExecuteAsync(context);
    }

    private static string Reason(SignatureCheck check) => check switch
    {
        SignatureCheck.Missing => "missing",
        SignatureCheck.Malformed => "malformed",
        SignatureCheck.Expired => "expired",
        _ => "mismatch",
    };

    [LoggerMessage(EventId = 4301, Level = LogLevel.Warning, Message = "Rejected a branch call to {Path} (gid {Gid}): signature {Reason}")]
    private static partial void LogRejected(ILogger logger, string path, string gid, string reason);
}
