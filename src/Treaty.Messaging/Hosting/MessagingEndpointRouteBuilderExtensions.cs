using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Treaty.Messaging.Embedded;

namespace Treaty.Messaging;

/// <summary>Maps the embedded transport's receiving endpoint.</summary>
public static class MessagingEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps <c>POST /treaty/messages</c>, where other services' embedded transports deliver the
    /// messages this service subscribed to. It answers 200 once the message is handled (its inbox
    /// row committed) or dead-lettered, and 503 with Retry-After when the sender should try again.
    /// Keep it on a loopback or private interface; it is the services' internal bus.
    /// </summary>
    public static IEndpointConventionBuilder MapTreatyMessaging(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        var dispatcher = endpoints.ServiceProvider.GetRequiredService<EmbeddedDispatcher>();
        var options = endpoints.ServiceProvider.GetService<MessagingOptions>();
        var retryAfter = options?.RetryDelay ?? MessagingDefaults.RetryDelay;
        return endpoints.MapPost(EmbeddedTransport.Path, async (HttpContext http) =>
        {
            var message = await EmbeddedHeaders.ReadAsync(http.Request, http.RequestAborted);
            return message is null
                ? Results.BadRequest()
                : await dispatcher.DispatchAsync(message, retryAfter, http.RequestAborted);
        });
    }
}
