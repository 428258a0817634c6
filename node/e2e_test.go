package node

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"
)

// openAIClient is the official client pointed at a node, without retries
// so an error surfaces as the node sent it.
func openAIClient(n *Node) openai.Client {
	return openai.NewClient(
		option.WithBaseURL(baseURL(n)+"/v1/"),
		option.WithAPIKey("test-key"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(&http.Client{Timeout: apiWait}),
	)
}

// e2eChat is a deterministic request: greedy decoding with a fixed seed.
func e2eChat() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model: testModel,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You are a shoal of fish."),
			openai.UserMessage("Where do you swim?"),
		},
		MaxTokens:   openai.Int(24),
		Temperature: openai.Float(0),
		Seed:        openai.Int(7),
	}
}

func TestOpenAIClientChatCompletion(t *testing.T) {
	n := startTestNode(t, nil)
	client := openAIClient(n)
	res, err := client.Chat.Completions.New(t.Context(), e2eChat())
	require.NoError(t, err)
	require.Equal(t, testModel, res.Model)
	require.Len(t, res.Choices, 1)
	require.Equal(t, "assistant", string(res.Choices[0].Message.Role))
	require.NotEmpty(t, res.Choices[0].Message.Content)
	require.Contains(t, []string{"stop", "length"}, res.Choices[0].FinishReason)
	require.Positive(t, res.Usage.PromptTokens)
	require.Positive(t, res.Usage.CompletionTokens)
	require.Equal(t, res.Usage.PromptTokens+res.Usage.CompletionTokens, res.Usage.TotalTokens)

	again, err := client.Chat.Completions.New(t.Context(), e2eChat())
	require.NoError(t, err)
	require.Equal(t, res.Choices[0].Message.Content, again.Choices[0].Message.Content, "deterministic for the same request")
}

func TestOpenAIClientCompletion(t *testing.T) {
	n := startTestNode(t, nil)
	client := openAIClient(n)
	res, err := client.Completions.New(t.Context(), openai.CompletionNewParams{
		Model:     openai.CompletionNewParamsModel(testModel),
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens: openai.Int(5),
	})
	require.NoError(t, err)
	require.Len(t, res.Choices, 1)
	require.Len(t, strings.Fields(res.Choices[0].Text), 5)
	require.Equal(t, openai.CompletionChoiceFinishReasonLength, res.Choices[0].FinishReason)
	require.EqualValues(t, 4, res.Usage.PromptTokens)
	require.EqualValues(t, 5, res.Usage.CompletionTokens)
}

func TestOpenAIClientStreamingMatchesNonStreaming(t *testing.T) {
	// Tokens 2ms apart, so the answer really arrives in pieces.
	n := startTestNode(t, withSimModel(time.Millisecond, 0, 2*time.Millisecond))
	client := openAIClient(n)
	// Both answers come from the backend: no-store keeps the response
	// cache out (TestOpenAIClientStreamsCachedAnswer covers the replay).
	noCache := option.WithHeader("Cache-Control", "no-store")
	want, err := client.Chat.Completions.New(t.Context(), e2eChat(), noCache)
	require.NoError(t, err)
	requireStreamEquals(t, client, want, noCache)
}

func TestOpenAIClientStreamsCachedAnswer(t *testing.T) {
	n := startTestNode(t, nil)
	client := openAIClient(n)
	want, err := client.Chat.Completions.New(t.Context(), e2eChat())
	require.NoError(t, err)
	requireStreamEquals(t, client, want)
}

// requireStreamEquals streams e2eChat and checks the accumulated answer
// equals want.
func requireStreamEquals(t *testing.T, client openai.Client, want *openai.ChatCompletion, opts ...option.RequestOption) {
	t.Helper()
	params := e2eChat()
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(t.Context(), params, opts...)
	var acc openai.ChatCompletionAccumulator
	var content strings.Builder
	chunks := 0
	for stream.Next() {
		chunk := stream.Current()
		require.True(t, acc.AddChunk(chunk))
		if len(chunk.Choices) > 0 {
			content.WriteString(chunk.Choices[0].Delta.Content)
		}
		chunks++
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	require.Greater(t, chunks, 2, "streamed in pieces")

	require.Equal(t, want.Choices[0].Message.Content, content.String())
	require.Len(t, acc.Choices, 1)
	require.Equal(t, want.Choices[0].Message.Content, acc.Choices[0].Message.Content)
	require.Equal(t, want.Choices[0].FinishReason, acc.Choices[0].FinishReason)
	require.Equal(t, want.Usage.PromptTokens, acc.Usage.PromptTokens)
	require.Equal(t, want.Usage.CompletionTokens, acc.Usage.CompletionTokens)
}

func TestOpenAIClientCompletionStreaming(t *testing.T) {
	n := startTestNode(t, nil)
	client := openAIClient(n)
	stream := client.Completions.NewStreaming(t.Context(), openai.CompletionNewParams{
		Model:     openai.CompletionNewParamsModel(testModel),
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("count with me")},
		MaxTokens: openai.Int(6),
	})
	var text strings.Builder
	finish := ""
	for stream.Next() {
		c := stream.Current()
		for _, ch := range c.Choices {
			text.WriteString(ch.Text)
			if ch.FinishReason != "" {
				finish = string(ch.FinishReason)
			}
		}
	}
	require.NoError(t, stream.Err())
	require.Len(t, strings.Fields(text.String()), 6)
	require.Equal(t, "length", finish)
}

func TestOpenAIClientListsModels(t *testing.T) {
	n := startTestNode(t, nil)
	client := openAIClient(n)
	page, err := client.Models.List(t.Context())
	require.NoError(t, err)
	require.Len(t, page.Data, 1)
	require.Equal(t, testModel, page.Data[0].ID)
	require.Equal(t, "shoal", page.Data[0].OwnedBy)
}

func TestOpenAIClientSeesUnknownModelAs404(t *testing.T) {
	n := startTestNode(t, nil)
	params := e2eChat()
	params.Model = "gpt-unknown"
	client := openAIClient(n)
	_, err := client.Chat.Completions.New(t.Context(), params)
	require.Error(t, err)
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "got %T: %v", err, err)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	require.Equal(t, "model_not_found", apiErr.Code)
	require.Equal(t, "invalid_request_error", apiErr.Type)
	require.Equal(t, "model", apiErr.Param)
	require.Contains(t, apiErr.Message, "gpt-unknown")
}

func TestOpenAIClientSeesBadParameterAs400(t *testing.T) {
	n := startTestNode(t, nil)
	params := e2eChat()
	params.Temperature = openai.Float(3)
	client := openAIClient(n)
	_, err := client.Chat.Completions.New(t.Context(), params)
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "got %T: %v", err, err)
	require.Equal(t, http.StatusBadRequest, apiErr.StatusCode)
	require.Equal(t, "temperature", apiErr.Param)
}
